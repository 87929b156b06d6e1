"""Trying to make issue 11's comments and attachments leak: a person who may not read a page must never get
its comments' or files' text from `/search`, when the page is restricted after indexing, and when an open page
is moved under a restricted parent (a move keeps the version: the rows of its children must follow the path).

Real service, real Postgres, the fake Confluence Cloud with permissions (`FakePermissions`, the oracle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Db
from tests.e2e.harness import Api, running, service_env, wait_until
from tests.fakes import office_files as files
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import content_of
from tests.fakes.confluence_permissions import FakePermissions
from tests.fakes.ollama import FakeOllama

READER, OUTSIDER = "p-reader", "p-outsider"


@pytest.fixture()
def wiki() -> Iterator[tuple[FakeConfluence, FakePermissions]]:
    fake = FakeConfluence("cloud").start()
    try:
        perms = FakePermissions.install(fake)
        fake.add_user(READER, "Rea Der")
        fake.add_user(OUTSIDER, "Out Sider")
        perms.add_group("g-staff", "staff", {READER, OUTSIDER})
        fake.add_space("ENG", "Engineering")
        perms.grant_space("ENG", groups=["g-staff"])
        yield fake, perms
    finally:
        fake.stop()


@pytest.fixture()
def person_api(db_url: str, wiki: tuple[FakeConfluence, FakePermissions], tmp_path: Path) -> Iterator[Api]:
    ollama = FakeOllama(dim=1024).start()
    env = service_env(database_url=db_url, confluence=wiki[0], ollama=ollama, data_dir=tmp_path / "data")
    env.update({"SEARCH_SERVICE_IDENTITY": "", "PERMISSION_SYNC_INTERVAL": "2"})
    try:
        with running(Api(env, tmp_path / "api.log")) as api:
            yield api  # type: ignore[misc]
    finally:
        ollama.stop()


def seen_by(api: Api, person: str, word: str) -> bool:
    """Whether `word` is anywhere in the person's search results (text, titles, metadata; not the echoed
    query), k large enough to return every chunk of this small wiki."""
    response = httpx.get(
        f"{api.url}/search", params={"q": word, "k": 100}, headers={"X-Confluence-User": person}, timeout=30
    )
    assert response.status_code == 200, response.text
    return word.lower() in json.dumps(response.json()["results"]).lower()


def test_comments_and_files_follow_their_page_restriction_and_move(
    person_api: Api, wiki: tuple[FakeConfluence, FakePermissions], db: Db
) -> None:
    fake, perms = wiki
    content = content_of(fake)
    fake.put_page("7101", title="Open plans", body="<p>Open plans body.</p>", space_key="ENG")
    fake.put_page("7102", title="Vault", body="<p>Vault body.</p>", space_key="ENG")
    perms.restrict("7102", users=[READER])
    fake.put_page("7103", title="Drifter", body="<p>Drifter body.</p>", space_key="ENG")
    content.add_comment("7101", "<p>Marmoset budget approved.</p>")
    content.add_attachment("7101", "plan.pdf", files.PDF, files.pdf(["Narwhal merger closes in May."]))
    content.add_comment("7102", "<p>Pangolin salary bands.</p>")
    content.add_attachment("7102", "bands.pdf", files.PDF, files.pdf(["Axolotl layoffs list."]))
    content.add_comment("7103", "<p>Quokka incident notes.</p>")
    content.add_attachment("7103", "drift.pdf", files.PDF, files.pdf(["Wombat vendor contract."]))
    for page_id in ("7101", "7102", "7103"):
        assert person_api.webhook({"event": "page_created", "page": {"id": int(page_id)}}).status_code == 202
    words = ("Marmoset", "Narwhal", "Pangolin", "Axolotl", "Quokka", "Wombat")
    wait_until(lambda: all(w in str(db.rows(p)) for p, w in [("7101", "Narwhal"), ("7102", "Axolotl"),
                                                               ("7103", "Wombat"), ("7101", "Marmoset")]),
               timeout=120, what="pages, comments and files indexed")  # fmt: skip

    assert all(seen_by(person_api, READER, w) for w in words), "the reader sees everything (the test is live)"
    assert seen_by(person_api, OUTSIDER, "Marmoset") and seen_by(person_api, OUTSIDER, "Wombat")
    assert not seen_by(person_api, OUTSIDER, "Pangolin"), "a restricted page's comment leaked"
    assert not seen_by(person_api, OUTSIDER, "Axolotl"), "a restricted page's attachment leaked"

    # Restricted after indexing: the restriction event re-reads it; its comment and file rows follow.
    perms.restrict("7101", users=[READER])
    body = {"eventType": "avi:confluence:permissions_updated:page", "content": {"id": "7101", "type": "page"}}
    assert person_api.webhook(body).status_code == 202
    wait_until(lambda: not seen_by(person_api, OUTSIDER, "Open plans"), timeout=60, what="page itself hidden")
    assert not seen_by(person_api, OUTSIDER, "Marmoset"), "comment of a newly restricted page leaked"
    assert not seen_by(person_api, OUTSIDER, "Narwhal"), "attachment of a newly restricted page leaked"

    # Moved under a restricted parent (same version): the children's rows must take the new path.
    fake.move_page("7103", parent_id="7102")
    assert person_api.webhook({"event": "page_moved", "page": {"id": 7103}}).status_code == 202
    wait_until(lambda: not seen_by(person_api, OUTSIDER, "Drifter body"), timeout=60, what="moved page hidden")
    assert not seen_by(person_api, OUTSIDER, "Quokka"), "comment of a page moved under a restricted parent leaked"
    assert not seen_by(person_api, OUTSIDER, "Wombat"), "attachment of a page moved under a restricted parent leaked"
    assert seen_by(person_api, READER, "Quokka") and seen_by(person_api, READER, "Wombat")
