"""The labelled page set: the wiki of Larkspur Freight, an imaginary parcel-logistics SaaS company.

Forty-four pages in storage format: runbooks, ADRs, API references, onboarding, postmortems, policies and
release notes, with code/info/warning/expand/panel macros, tables and code. Deliberate traps:

* near-duplicates: the current rollback runbook and its archived 2022 predecessor (different commands); the
  employee onboarding page and the customer onboarding checklist; the expense and travel policies;
* distractors: the incident-review index links to every postmortem by its key with a one-line summary, so a
  query naming `PM-2024-017` matches it too; ADR-0015 (rejected GraphQL) sits beside ADR-0012 (gRPC);
* three long pages (3,000+ words) whose answers sit deep in one section: the service catalogue, the Parcel
  API v3 reference and the 2025 release notes. Their sections are generated from the fact tables below, so
  every sentence states a checkable fact (the questions in `questions.yaml` cite them).

`PAGES` is what the benchmark serves from the fake Confluence; `questions.yaml` refers to pages by id.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.quality.storage import (
    c,
    code,
    expand,
    h,
    info,
    jira,
    link,
    note,
    ol,
    p,
    page,
    panel,
    status,
    table,
    ul,
    warning,
)


@dataclass(frozen=True, slots=True)
class WikiPage:
    id: str
    space: str
    title: str
    labels: tuple[str, ...]
    body: str


PAGES: list[WikiPage] = []


def add(page_id: str, space: str, title: str, labels: tuple[str, ...], *blocks: str) -> None:
    PAGES.append(WikiPage(page_id, space, title, labels, page(*blocks)))


# --- OPS: runbooks, postmortems --------------------------------------------------------------------------------
add(
    "2001", "OPS", "Runbook: rolling back a production deploy", ("runbook", "deploy"),
    info(p("This is the current procedure (since the move to shipctl in 2024). The Jenkins-based procedure is "
           "archived.")),
    h(2, "When to roll back"),
    p("Roll back when the error rate of the service doubles within 30 minutes of a release, when the canary "
      "health checks fail, or when the incident commander asks for it. Do not try to fix forward during a SEV1."),
    h(2, "Steps"),
    ol(f"Find the previous release id with {c('shipctl releases list --service <name> --limit 5')}.",
       f"Run {c('shipctl rollback --service <name> --to <release-id>')}. The rollback goes through the canary "
       "stage first and takes about 6 minutes for a typical service.",
       "Announce the rollback in #deploys with the release id and the reason.",
       "Open a follow-up ticket in the owning team's board."),
    code("shipctl releases list --service dispatch-api --limit 5\n"
         "shipctl rollback --service dispatch-api --to rel-2025.14.3\n"
         "shipctl status --service dispatch-api --watch", "bash", title="Example: rolling back dispatch-api"),
    h(2, "Releases with database migrations"),
    warning(p("Migrations are forward-only. If the release you roll back ran a migration, get approval from the "
              f"incident commander first and check {c('shipctl migrations status --service <name>')}: the old code "
              "must be compatible with the new schema (see the expand/contract rule in the migration "
              "guidelines).")),
    h(2, "After the rollback"),
    p("Keep the service pinned with " + c("shipctl pin --service <name>") + " until the fix is released, "
      "otherwise the next release train redeploys the broken build."),
)

add(
    "2002", "OPS", "Runbook: rolling back a production deploy (2022, archived)", ("runbook", "archived"),
    warning(p("Archived in 2024. This page describes the Jenkins-era procedure and is kept for reference only.")),
    h(2, "Steps"),
    ol(f"Open the Jenkins job {c('prod-revert')} and enter the build number to restore.",
       f"Alternatively run {c('deployer revert --app <name> --build <number>')} from the bastion host.",
       "Announce the revert in #ops-announce."),
    p("A revert took 20 to 25 minutes because every node was redeployed at once without a canary."),
)

add(
    "2003", "OPS", "Runbook: Redis Sentinel failover", ("runbook", "redis"),
    p("The dispatch cache runs as one Redis primary and two replicas watched by three sentinels, one per "
      "availability zone. The master name is " + c("dispatch-cache") + "."),
    h(2, "How failover works"),
    p("A failover starts when a quorum of 2 of the 3 sentinels agree that the primary is down for 5 seconds "
      "(down-after-milliseconds 5000). The sentinels then promote the replica with the lowest replication lag."),
    h(2, "Manual failover"),
    code("redis-cli -p 26379 SENTINEL get-master-addr-by-name dispatch-cache\n"
         "redis-cli -p 26379 SENTINEL failover dispatch-cache\n"
         "redis-cli -p 26379 SENTINEL replicas dispatch-cache", "bash"),
    note(p("After any failover restart the dispatch-worker pods: they cache the primary's address and keep "
           "writing to the old primary (now a read-only replica) until restarted.")),
    h(2, "Alerts"),
    p("The alert RedisSentinelQuorumLost fires when fewer than 2 sentinels are reachable; with one sentinel no "
      "automatic failover can happen."),
)

add(
    "2004", "OPS", "Runbook: Postgres replica lag", ("runbook", "postgres"),
    p("The reporting replicas serve the analytics dashboards through the pgbouncer pool " + c("reporting-ro") + "."),
    h(2, "Alert"),
    p("PostgresReplicaLagHigh fires when replay lag stays above 30 seconds for 5 minutes."),
    h(2, "Diagnose"),
    code("SELECT application_name, state, replay_lag, write_lag\nFROM pg_stat_replication\nORDER BY replay_lag DESC;",
         "sql", title="On the primary"),
    p("Long-running analytics queries on the replica hold back replay when hot_standby_feedback is on. Cancel them "
      "with " + c("SELECT pg_cancel_backend(pid)") + " after checking with the data team."),
    h(2, "Mitigate"),
    p("If the lag exceeds 5 minutes, take the replica out of the " + c("reporting-ro") + " pool by setting its "
      "weight to 0 in the pgbouncer config; dashboards then read from the other replica."),
)

add(
    "2005", "OPS", "Runbook: Kafka consumer lag on tracking-events", ("runbook", "kafka"),
    p("Tracking scans from hubs arrive on the topic " + c("tracking-events") + " (48 partitions) and are consumed by "
      "the group " + c("tracking-ingest") + "."),
    h(2, "Check the lag"),
    code("kafka-consumer-groups --bootstrap-server kafka-1:9092 --describe --group tracking-ingest", "bash"),
    h(2, "Scale the consumers"),
    p("Scale the tracking-ingest deployment up to 24 replicas; more replicas than half the partitions give no "
      "gain because each replica already handles two partitions at that size."),
    info(p("Lag under 50,000 messages clears by itself within 10 minutes after a hub's evening batch upload.")),
)

add(
    "2006", "OPS", "Postmortem PM-2024-017: label printing outage", ("postmortem",),
    table(["Field", "Value"], [["Date", "2024-03-12"], ["Duration", "2 h 14 min"], ["Severity", "SEV1"],
                               ["Incident commander", "Priya Natarajan"]]),
    h(2, "Summary"),
    p("Hubs could not print shipping labels; label requests failed with TLS handshake errors."),
    h(2, "Root cause"),
    p("The intermediate certificate of the label-gateway's TLS chain expired. cert-manager renewed the leaf "
      "certificate but the bundle still carried the old intermediate, and nothing monitored intermediates."),
    h(2, "Action items"),
    table(["Ticket", "Action", "Owner"], [[jira("OPS-4312"), "Alert on the expiry of every certificate in a chain",
                                           "SRE"],
                                          [jira("OPS-4313"), "Label printing fallback to the secondary gateway",
                                           "Hub software"]]),
)

add(
    "2007", "OPS", "Postmortem PM-2024-023: duplicate invoices", ("postmortem", "billing"),
    table(["Field", "Value"], [["Date", "2024-05-02"], ["Duration", "3 days until detection"],
                               ["Severity", "SEV2"]]),
    h(2, "Summary"),
    p("412 customers received a second invoice for April."),
    h(2, "Root cause"),
    p("The invoice service stored idempotency keys for 24 hours, but the payment provider retried failed "
      "webhook deliveries for up to 36 hours; retries after 24 hours created new invoices."),
    h(2, "Fix"),
    p("Idempotency keys are now kept for 7 days (" + jira("BILL-881") + ") and credit notes were issued to all "
      "affected customers."),
)

add(
    "2008", "OPS", "Postmortem PM-2024-031: tracking map blank in the EU", ("postmortem",),
    table(["Field", "Value"], [["Date", "2024-08-20"], ["Duration", "47 min"], ["Severity", "SEV2"]]),
    h(2, "Root cause"),
    p("A CDN configuration change dropped the region header from the cache key of map tiles, so EU visitors got "
      "tiles cached for the US tile server, which rejected them."),
    h(2, "Action items"),
    ul("CDN config changes now need a second reviewer (" + jira("OPS-4571") + ").",
       "A synthetic check loads the tracking map from Frankfurt every minute."),
)

add(
    "2009", "OPS", "Incident reviews 2024", ("postmortem", "index"),
    p("All 2024 postmortems, newest first. Read the postmortem itself for root causes and action items."),
    table(["Key", "Title", "Severity"],
          [["PM-2024-031", link("Postmortem PM-2024-031: tracking map blank in the EU"), "SEV2"],
           ["PM-2024-023", link("Postmortem PM-2024-023: duplicate invoices"), "SEV2"],
           ["PM-2024-017", link("Postmortem PM-2024-017: label printing outage"), "SEV1"]]),
    p("Quarterly review meetings go through the open action items of PM-2024-017, PM-2024-023 and PM-2024-031."),
)

add(
    "2010", "OPS", "On-call handbook", ("oncall",),
    h(2, "Rotation"),
    p("Each team runs a weekly rotation with a primary and a secondary. The handover is every Tuesday at 11:00 "
      "CET, in the team's on-call channel."),
    h(2, "Paging"),
    p("Pages come through Opsgenie. Acknowledge a P1 page within 5 minutes and a P2 within 30 minutes; an "
      "unacknowledged page escalates to the secondary, then to the engineering manager."),
    h(2, "Compensation"),
    table(["Item", "Amount"], [["On-call week (standby)", "250 EUR"], ["Night with an incident (22:00-07:00)",
                                                                        "60 EUR extra"],
                               ["Public holiday on call", "double standby rate"]]),
    expand("Tips for a calm week", ul("Check the dashboards on Tuesday before the handover.",
                                      "Keep your laptop and a charged phone within reach.")),
)

add(
    "2011", "OPS", "Incident severity levels", ("incident", "policy"),
    table(["Severity", "Definition", "First response", "Status page updates"],
          [["SEV1", "Customer-facing outage for more than 10% of tenants, or data loss", "15 min", "every 30 min"],
           ["SEV2", "Degraded service for some tenants, or a core feature down with a workaround", "1 h",
            "every 2 h"],
           ["SEV3", "Minor bug with limited customer impact", "next business day", "none"],
           ["SEV4", "Cosmetic issue", "backlog", "none"]]),
    p("The incident commander decides the severity and may raise it at any time; only the commander lowers it."),
)

add(
    "2013", "OPS", "Runbook: Postgres backup and restore", ("runbook", "postgres"),
    p("Backups of every production cluster are taken with pgBackRest into the bucket " + c("lf-pg-backups") +
      ", stanza " + c("main") + "."),
    table(["Backup", "When", "Kept"], [["Full", "Sunday at 01:00 UTC", "4 full backups (4 weeks)"],
                                      ["Differential", "Monday to Saturday at 01:00 UTC", "until the next full"],
                                      ["WAL archive", "continuous", "as long as the oldest full backup"]]),
    h(2, "Point-in-time restore"),
    code('pgbackrest --stanza=main --delta --type=time "--target=2025-03-01 10:00:00+00" restore\n'
         "pg_ctl -D /var/lib/postgresql/16/main start", "bash", title="Restore to a point in time"),
    p("Restore onto a fresh node, never onto the running primary. A restore test runs on the first Monday of "
      "every month and reports to #sre."),
)

add(
    "2014", "OPS", "Hub scanner error codes", ("hubs", "reference"),
    p("Codes shown by the handheld scanners in the hubs, and what the hub staff should do."),
    table(["Code", "Meaning", "What to do"],
          [["SC-101", "Battery below 10%", "Swap the battery; scans are kept"],
           ["SC-204", "No Wi-Fi certificate", "Bring the scanner to the hub lead to re-enrol it in the MDM"],
           ["SC-310", "Barcode unreadable", "Enter the tracking number manually and mark the parcel for relabel"],
           ["SC-415", "Clock out of sync", "Restart the scanner; it syncs its clock on start"]]),
    note(p("Scans recorded while offline are uploaded by hub-scanner-sync once the scanner is back on Wi-Fi.")),
)

# --- ENG: ADRs, guidelines, API ----------------------------------------------------------------------------------
add(
    "2101", "ENG", "ADR-0007: Postgres as the job queue", ("adr",),
    table(["Status", "Date", "Deciders"], [[status("Accepted"), "2023-05-09", "Platform team"]]),
    h(2, "Context"),
    p("Background jobs (label rendering, invoice runs, customs filings) were spread over cron and an ad-hoc Redis "
      "list that lost jobs on failover."),
    h(2, "Decision"),
    p("Jobs are stored in Postgres with procrastinate; a job is committed in the same transaction as the business "
      "change that caused it. RabbitMQ was rejected: one more stateful system to run for a few hundred jobs per "
      "second."),
    h(2, "Consequences"),
    p("Workers poll with LISTEN/NOTIFY; job throughput is bounded by the primary database."),
)

add(
    "2102", "ENG", "ADR-0012: gRPC for internal service calls", ("adr",),
    table(["Status", "Date"], [[status("Accepted"), "2024-01-15"]]),
    h(2, "Decision"),
    p("Internal synchronous calls between services use gRPC with protobuf contracts kept in the " +
      c("larkspur/protos") + " repository. The public API stays REST/JSON."),
    h(2, "Rules"),
    ul("Every call sets a deadline; servers propagate the remaining deadline downstream.",
       "Breaking changes to a message need a new field number, never a reused one."),
)

add(
    "2103", "ENG", "ADR-0013: Versioning of event schemas", ("adr", "kafka"),
    table(["Status", "Date"], [[status("Accepted"), "2024-02-02"]]),
    p("Events on Kafka are Avro records registered in the schema registry with compatibility mode "
      "BACKWARD_TRANSITIVE, so a consumer on any older schema version can read every newer event."),
    p("A field may be removed only after every consumer stopped reading it, and new fields need defaults."),
)

add(
    "2104", "ENG", "ADR-0015: GraphQL for the public API", ("adr",),
    table(["Status", "Date"], [[status("Rejected", "Red"), "2024-06-11"]]),
    h(2, "Proposal"),
    p("Offer the public API as GraphQL in addition to REST so that customers fetch shipments and their events in "
      "one call."),
    h(2, "Why rejected"),
    p("Query cost limiting and caching were judged too costly for a team of four; the shipment endpoint instead "
      "gained an " + c("expand=events") + " parameter."),
)

add(
    "2106", "ENG", "Parcel API error codes", ("api", "reference"),
    p("Every error response has the shape " + c('{"error": {"code": "LF-xxxx", "message": "..."}}') + "."),
    table(["Code", "HTTP", "Meaning", "What the client should do"],
          [["LF-1001", "400", "Malformed JSON body", "Fix the request"],
           ["LF-1002", "400", "Unknown field in the body", "Remove the field"],
           ["LF-1104", "401", "API key revoked", "Create a new key in the dashboard"],
           ["LF-1201", "403", "Key lacks the shipments:write scope", "Use a key with the scope"],
           ["LF-2001", "422", "Address could not be geocoded", "Check street and postcode"],
           ["LF-2103", "422", "Parcel heavier than 31.5 kg", "Split the parcel or book freight"],
           ["LF-2207", "422", "Customs declaration missing an HS code", "Add hs_code to every item"],
           ["LF-2208", "422", "Declared value above 1,000 EUR without an EORI number", "Add the sender's EORI"],
           ["LF-3010", "409", "Manifest already closed", "Open a new manifest"],
           ["LF-4290", "429", "Rate limit exceeded", "Wait for Retry-After seconds"],
           ["LF-5003", "503", "Carrier backend unavailable", "Retry with backoff"]]),
)

add(
    "2107", "ENG", "Verifying webhook signatures", ("api", "webhooks"),
    p("Every webhook we send to customers carries " + c("X-Larkspur-Signature") + " and " +
      c("X-Larkspur-Timestamp") + ". The signature is the hex HMAC-SHA256 of " + c("timestamp + '.' + body") +
      " keyed with the endpoint's signing secret."),
    p("Reject requests whose timestamp is more than 300 seconds old, to stop replays."),
    code("import hmac, hashlib, time\n\n"
         "def verify(secret: bytes, body: bytes, timestamp: str, signature: str) -> bool:\n"
         "    if abs(time.time() - int(timestamp)) > 300:\n"
         "        return False\n"
         "    expected = hmac.new(secret, timestamp.encode() + b'.' + body, hashlib.sha256).hexdigest()\n"
         "    return hmac.compare_digest(expected, signature)", "python", title="Python"),
    p("Signing secrets start with " + c("whsec_") + " and can be rolled in the dashboard; during a roll both "
      "secrets are valid for 24 hours."),
)

add(
    "2108", "ENG", "Local development setup", ("onboarding", "engineering"),
    h(2, "Requirements"),
    ul("Docker 24 or newer with at least 8 GB of memory for the VM", "Python 3.12 and Go 1.22", "mkcert"),
    h(2, "Start the stack"),
    code("git clone git@git.larkspur.internal:platform/devstack.git\ncd devstack\nmake dev-up\n"
         "./scripts/seed.sh --tenants 3", "bash"),
    p("The API gateway then listens on https://localhost:8443 and the admin UI on port 8444."),
    expand("Troubleshooting", p("If " + c("make dev-up") + " hangs at 'waiting for postgres', delete the volume "
                                "with " + c("docker volume rm devstack_pg") + " and retry.")),
)

add(
    "2109", "ENG", "Code review guidelines", ("engineering",),
    ul("Every pull request needs one approval from a code owner; pull requests with a database migration need two.",
       "Keep pull requests under 400 changed lines; split larger changes behind a feature flag.",
       "Review within one working day. If you cannot, say so and suggest another reviewer."),
    p("Comments prefixed with " + c("nit:") + " are optional; anything else must be resolved before merging."),
)

add(
    "2110", "ENG", "Feature flag lifecycle", ("engineering",),
    p("Flags live in Unleash. Name them " + c("<team>.<feature>.<yyyymm>") + ", for example " +
      c("hubs.bulk-reprint.202503") + "."),
    table(["Stage", "Rule"], [["Created", "Default off in production"],
                              ["Rollout", "Gradual by tenant: 1%, 10%, 50%, 100%"],
                              ["Cleanup", "Remove the flag and dead code within 30 days of reaching 100%"]]),
    p("A weekly bot lists flags older than 90 days in #eng-flags."),
)

add(
    "2111", "ENG", "Database migration guidelines", ("engineering", "postgres"),
    h(2, "Expand and contract"),
    p("Schema changes ship in two releases: first add (expand) what the new code needs while the old code still "
      "works, then remove (contract) what the old code used. A rollback must never need a down-migration."),
    h(2, "Locks"),
    p("The migration tool sets " + c("lock_timeout = '3s'") + " and retries three times; a migration that cannot "
      "get its lock fails instead of blocking traffic."),
    code("CREATE INDEX CONCURRENTLY IF NOT EXISTS shipments_tenant_created_idx\n"
         "    ON shipments (tenant_id, created_at);", "sql", title="Indexes are always built concurrently"),
    warning(p("Never add a column with a volatile default such as " + c("DEFAULT now()") + " on a large table: it "
              "rewrites the table under an exclusive lock.")),
)

add(
    "2112", "ENG", "Rate limiting design", ("engineering", "api"),
    p("The API gateway limits each tenant with a token bucket kept in Redis: 120 requests per second sustained, "
      "bursts up to 240."),
    p("Responses carry " + c("X-RateLimit-Limit") + ", " + c("X-RateLimit-Remaining") + " and, on a 429, " +
      c("Retry-After") + " in seconds."),
    code("local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[2])", "lua",
         title="Excerpt of the bucket script"),
    p("Label rendering endpoints have their own, lower bucket (see the API reference)."),
)

# --- SEC ------------------------------------------------------------------------------------------------------------
add(
    "2201", "SEC", "Production access policy", ("policy", "security"),
    p("Production access goes through Teleport. A request needs approval from two people, one of them from the "
      "owning team, and is granted for at most 8 hours."),
    panel("Break-glass", p("The break-glass account " + c("lf-breakglass") + " is for when Teleport itself is "
                           "down. Its use pages the security on-call and must be written up within 24 hours.")),
    p("Access reviews happen every quarter; unused roles are removed after 60 days."),
)

add(
    "2202", "SEC", "Password and MFA policy", ("policy", "security"),
    table(["Rule", "Requirement"], [["Minimum password length", "14 characters"],
                                    ["MFA", "Required for every account"],
                                    ["Administrators", "Hardware security key (YubiKey) required"],
                                    ["Service credentials", "Rotated every 90 days"]]),
    p("Passwords are never shared over chat; use the 1Password vault of your team."),
)

add(
    "2203", "SEC", "Secrets management with Vault", ("security", "engineering"),
    p("Service secrets live in Vault under " + c("kv/teams/<team>/<service>") + ". Database credentials are "
      "dynamic: Vault issues them with a TTL of 1 hour and the sidecar renews them."),
    code("vault login -method=oidc\nvault kv get kv/teams/billing/invoice-service", "bash"),
    warning(p("Never commit secrets to git. The pre-commit hook runs gitleaks; a leaked secret must be rotated "
              "within 4 hours even if the commit was never pushed.")),
)

add(
    "2204", "SEC", "Vulnerability management SLA", ("policy", "security"),
    p("Fix deadlines count from the day the finding is triaged."),
    table(["Severity (CVSS)", "Fix within"], [["Critical (9.0-10.0)", "7 days"], ["High (7.0-8.9)", "30 days"],
                                              ["Medium (4.0-6.9)", "90 days"], ["Low", "best effort"]]),
    p("Exceptions need sign-off from the CISO and expire after 90 days."),
)

add(
    "2205", "SEC", "Data retention policy", ("policy", "legal"),
    table(["Data", "Kept for", "Why"],
          [["Tracking events", "13 months", "Claims window of the carriers"],
           ["Invoices", "10 years", "German commercial and tax law"],
           ["Support tickets", "3 years", "Limitation period"],
           ["Application logs", "30 days", "Operations only"]]),
    p("Personal data is deleted within 30 days of a verified deletion request, except where the law requires "
      "us to keep it (invoices)."),
)

# --- HR -------------------------------------------------------------------------------------------------------------
add(
    "2301", "HR", "Onboarding: your first week", ("onboarding", "hr"),
    h(2, "Monday"),
    p("Pick up your laptop at the Berlin reception at 9:00. Your onboarding buddy meets you there and takes you "
      "to the team."),
    h(2, "Accounts"),
    p("Your Google, Slack and Jira accounts exist on your first day; GitHub access is granted by your manager."),
    h(2, "Training"),
    p("Finish the security awareness training within your first 5 working days; production access is only "
      "granted afterwards."),
    info(p("Lunch on your first Friday is with the whole team, paid by the company.")),
)

add(
    "2302", "HR", "Expense policy", ("policy", "hr"),
    h(2, "Meals"),
    p("While travelling for work, meals are reimbursed up to 45 EUR per day in Germany and 60 EUR per day abroad."),
    h(2, "Hotels"),
    p("Hotels are reimbursed up to 160 EUR per night; in London and Paris up to 220 EUR."),
    h(2, "Submitting"),
    p("Submit receipts in Pleo within 60 days. Expenses without a receipt are not reimbursed."),
)

add(
    "2303", "HR", "Travel policy", ("policy", "hr"),
    p("Book trips through TravelPerk. Take the train for trips under 4 hours; fly economy for flights under 5 "
      "hours, premium economy above."),
    p("Trips need approval from your manager before booking. For what you may spend on meals and hotels, see " +
      link("Expense policy") + "."),
)

add(
    "2304", "HR", "Parental leave", ("policy", "hr"),
    p("The primary caregiver gets 20 weeks of fully paid parental leave; the secondary caregiver gets 8 weeks."),
    p("Tell HR at least 8 weeks before the leave starts. Leave can be split into up to three blocks within the "
      "child's first two years."),
)

add(
    "2305", "HR", "Remote work policy", ("policy", "hr"),
    p("You may work from anywhere in Germany. Working from another EU country is allowed for up to 40 working days "
      "a year; outside the EU it needs HR approval because of tax and social security rules."),
    p("Every employee gets a one-off home office budget of 500 EUR for a desk, a chair or a monitor."),
)

# --- IT -------------------------------------------------------------------------------------------------------------
add(
    "2401", "IT", "VPN setup (WireGuard)", ("it", "how-to"),
    ol("Install the WireGuard client.", "Download your profile from " + c("https://vpn.larkspur.internal/profile") +
       " (log in with Google).", "Import the profile and activate the tunnel."),
    p("The tunnel uses UDP port 51820. It is split-tunnel: only internal addresses go through the VPN."),
    expand("It connects but nothing loads", p("Hotel and train Wi-Fi often block UDP 51820. Switch to the " +
                                              c("larkspur-tcp") + " profile, which tunnels over TCP 443.")),
)

add(
    "2402", "IT", "Laptops and equipment", ("it",),
    p("Engineers get a MacBook Pro, everyone else a MacBook Air. Laptops are replaced every 3 years."),
    p("Request a second monitor, a headset or a docking station through the IT service desk, request type " +
      c("IT-HW") + "."),
)

add(
    "2403", "IT", "Office Wi-Fi and printers", ("it", "office"),
    p("Staff use the network LF-Staff with their Google login. Guests use LF-Guest; its password changes every "
      "day at 06:00 and is shown on the screen at reception."),
    p("Printers release jobs when you tap your badge."),
)

# --- PRD: release process, support ---------------------------------------------------------------------------------
add(
    "2502", "PRD", "Release process", ("release",),
    p("The release train leaves every other Thursday. Code freeze is on the Wednesday before at 12:00 CET."),
    p("A hotfix can ship any day but needs the approval of the release captain of the current train."),
    table(["Role", "Who"], [["Release captain", "Rotates among the team leads, listed in #releases"],
                            ["QA sign-off", "The QA guild, by Wednesday 18:00"]]),
)

add(
    "2503", "PRD", "Support escalation matrix", ("support",),
    table(["Plan", "First response", "Escalate to tier 2 after"],
          [["Starter", "1 business day", "2 business days"], ["Business", "4 hours", "8 hours"],
           ["Enterprise", "1 hour", "4 hours"]]),
    p("Tier 2 escalates to engineering through a Jira ticket in the SUP project with the label "
      + c("needs-eng") + "."),
)

add(
    "2504", "PRD", "Customer onboarding checklist", ("support", "onboarding"),
    p("For customer success managers onboarding a new customer (not for new employees)."),
    ol("Create the tenant in the admin UI and send the API keys.",
       "Run a test shipment in the sandbox with the customer.",
       "Schedule the go-live call within 14 days of signing."),
)

add(
    "2505", "PRD", "Glossary", ("reference",),
    table(["Term", "Meaning"],
          [["Consignment", "Everything one sender ships to one receiver at once; one or more parcels"],
           ["Manifest", "The list of parcels handed to a carrier in one pickup"],
           ["Hub scan", "A tracking event recorded when a parcel passes a sorting hub"],
           ["HS code", "The customs tariff number of a good"]]),
)


# --- long pages, generated from fact tables ----------------------------------------------------------------------
# (name, team, language, port, datastore, availability SLO, p99 ms, on-call rotation, known failure, remedy)
SERVICES = [
    ("dispatch-api", "Dispatch", "Go", 8080, "Postgres dispatch", "99.95%", 250, "dispatch-oncall",
     "connection pool exhaustion after a Postgres failover", "restart the pods in batches of three"),
    ("dispatch-worker", "Dispatch", "Go", 8081, "Redis dispatch-cache", "99.9%", 900, "dispatch-oncall",
     "stale Redis primary address after a Sentinel failover", "restart the pods"),
    ("label-gateway", "Hub software", "Java", 8443, "none (stateless)", "99.95%", 400, "hubs-oncall",
     "TLS handshake failures when a certificate in the chain expires", "reissue the bundle with cert-manager"),
    ("label-renderer", "Hub software", "Rust", 9100, "S3 label-archive", "99.9%", 1200, "hubs-oncall",
     "out-of-memory kills on labels with more than 40 barcodes", "raise the memory limit to 2 GiB"),
    ("tracking-ingest", "Tracking", "Kotlin", 8085, "Kafka tracking-events", "99.9%", 300, "tracking-oncall",
     "consumer lag after hub batch uploads", "scale to 24 replicas"),
    ("tracking-api", "Tracking", "Go", 8086, "Cassandra tracking", "99.95%", 200, "tracking-oncall",
     "slow reads when a Cassandra node is compacting", "lower the read consistency to LOCAL_ONE for 1 hour"),
    ("invoice-service", "Billing", "Python", 8090, "Postgres billing", "99.9%", 800, "billing-oncall",
     "duplicate invoices when payment webhooks are retried late", "check the idempotency key table"),
    ("payment-webhooks", "Billing", "Python", 8091, "Postgres billing", "99.9%", 500, "billing-oncall",
     "signature failures after the provider rotates its secret", "load the new secret from Vault"),
    ("customs-broker", "Customs", "Java", 8095, "Postgres customs", "99.5%", 2000, "customs-oncall",
     "filings stuck when the customs authority's API is in maintenance", "pause the filing queue"),
    ("address-geocoder", "Platform", "Go", 8100, "Elasticsearch addresses", "99.9%", 150, "platform-oncall",
     "wrong coordinates after an index rebuild without the postcode synonyms", "reload the synonym file"),
    ("route-planner", "Dispatch", "C++", 8110, "none (in memory)", "99.5%", 5000, "dispatch-oncall",
     "timeouts for routes with more than 180 stops", "split the route at the hub"),
    ("notification-service", "Customer experience", "TypeScript", 8120, "Postgres notify", "99.9%", 600,
     "cx-oncall", "SMS sending stops when the provider credit runs out", "top up the credit in the provider portal"),
    ("tenant-admin", "Platform", "TypeScript", 8130, "Postgres tenants", "99.5%", 700, "platform-oncall",
     "login loops when the OIDC clock skew exceeds 60 seconds", "resync NTP on the node"),
    ("api-gateway", "Platform", "Go", 8443, "Redis ratelimit", "99.99%", 50, "platform-oncall",
     "429 storms when the Redis ratelimit cluster is slow", "fail open by setting RATELIMIT_FAIL_OPEN=true"),
    ("pickup-scheduler", "Dispatch", "Kotlin", 8140, "Postgres dispatch", "99.5%", 900, "dispatch-oncall",
     "missed pickups when the carrier calendar sync fails", "rerun the calendar sync job"),
    ("returns-portal", "Customer experience", "TypeScript", 8150, "Postgres returns", "99.5%", 800, "cx-oncall",
     "QR codes not shown when the label-renderer is down", "serve the PDF fallback"),
    ("analytics-export", "Data", "Python", 8160, "BigQuery exports", "99.0%", 10000, "data-oncall",
     "exports late when the reporting replicas lag", "move the export to the next hour"),
    ("hub-scanner-sync", "Hub software", "Rust", 8170, "SQLite on each scanner", "99.5%", 300, "hubs-oncall",
     "scanners offline after a Wi-Fi certificate change", "push the new Wi-Fi profile through the MDM"),
    ("carrier-connect", "Integrations", "Java", 8180, "Postgres carriers", "99.9%", 1500, "integrations-oncall",
     "carrier API tokens expiring on the first of the month", "rotate the tokens in Vault"),
    ("audit-log", "Security", "Go", 8190, "Postgres audit (append-only)", "99.9%", 100, "security-oncall",
     "disk full on the audit database when retention jobs fail", "run the retention job manually"),
]


def _service_section(s: tuple[object, ...]) -> str:
    name, team, lang, port, store, slo, p99, rota, failure, remedy = s
    return (
        h(2, str(name))
        + p(f"{name} is owned by the {team} team and written in {lang}. It listens on port {port} and keeps its "
            f"state in {store}. Its availability objective is {slo} per 30-day window, and 99% of its requests "
            f"should finish within {p99} ms.")
        + table(["Item", "Value"], [["Owner", str(team)], ["Port", str(port)], ["Datastore", str(store)],
                                    ["SLO", str(slo)], ["p99 target", f"{p99} ms"], ["Rotation", str(rota)]])
        + h(3, "Dashboards and alerts")
        + p(f"The Grafana dashboard 'Service / {name}' shows traffic, errors, latency and saturation. The alerts "
            f"{name}-error-budget-burn and {name}-latency-p99 page the {rota} rotation in Opsgenie; warnings go to "
            f"the team channel only. Alerts link back to this section.")
        + h(3, "Known failure modes")
        + p(f"The most common incident is {failure}. The first remedy is to {remedy}; if that does not help within "
            "15 minutes, escalate to the owning team's lead and open an incident.")
        + code(f"curl -fsS http://{name}.svc.larkspur.internal:{port}/healthz\n"
               f"kubectl -n {str(team).lower().replace(' ', '-')} get pods -l app={name}", "bash",
               title="Health check")
        + p(f"Deploys of {name} go through the standard release train; a rollback follows the shipctl runbook.")
    )


add(
    "2012", "OPS", "Service catalogue and operational handbook", ("runbook", "catalogue"),
    info(p("One section per production service: owner, port, datastore, objectives, alerts and the usual "
           "failure. Keep your service's section current; the on-call handbook links here.")),
    h(1, "Services"),
    *[_service_section(s) for s in SERVICES],
)

# (method, path, summary, rate limit per second, notable error, request field example, response note)
ENDPOINTS = [
    ("POST", "/v3/shipments", "Create a shipment with one or more parcels", 50, "LF-2001",
     "sender, receiver, parcels[]", "returns the shipment id and a label URL per parcel"),
    ("GET", "/v3/shipments/{id}", "Read a shipment", 200, "LF-1104", "expand=events",
     "with expand=events the tracking events are embedded"),
    ("GET", "/v3/shipments", "List shipments, newest first", 100, "LF-1002", "created_after, status, cursor",
     "pages of at most 100 shipments with a next cursor"),
    ("PATCH", "/v3/shipments/{id}", "Change the receiver or the delivery window", 50, "LF-3010",
     "receiver, delivery_window", "only before the manifest is closed"),
    ("DELETE", "/v3/shipments/{id}", "Cancel a shipment", 20, "LF-3010", "reason",
     "cancellation is free until the first hub scan"),
    ("POST", "/v3/shipments/{id}/labels", "Render labels again", 10, "LF-5003", "format=pdf|zpl",
     "ZPL labels are for thermal printers at 203 dpi"),
    ("GET", "/v3/labels/{label_id}", "Download one label", 30, "LF-1104", "format",
     "label URLs expire after 7 days"),
    ("POST", "/v3/manifests", "Open a manifest for a pickup", 10, "LF-1201", "carrier, pickup_date",
     "one open manifest per carrier and day"),
    ("POST", "/v3/manifests/{id}/close", "Close a manifest and hand it to the carrier", 5, "LF-3010", "none",
     "closing triggers the carrier's pickup booking"),
    ("GET", "/v3/manifests/{id}", "Read a manifest", 100, "LF-1104", "none", "lists the shipment ids"),
    ("POST", "/v3/pickups", "Book a pickup without a manifest", 10, "LF-5003", "address, window",
     "pickups must be booked before 14:00 for the same day"),
    ("GET", "/v3/tracking/{tracking_number}", "Public tracking by number", 300, "LF-4290", "lang",
     "no API key needed; answers are cached for 60 seconds"),
    ("POST", "/v3/webhooks", "Register a webhook endpoint", 5, "LF-1002", "url, events[]",
     "returns the signing secret once, prefixed whsec_"),
    ("GET", "/v3/webhooks", "List webhook endpoints", 50, "LF-1104", "none", "secrets are never returned"),
    ("DELETE", "/v3/webhooks/{id}", "Remove a webhook endpoint", 5, "LF-1104", "none",
     "pending deliveries are dropped"),
    ("POST", "/v3/customs/declarations", "File a customs declaration", 10, "LF-2207",
     "items[].hs_code, items[].value", "required for parcels leaving the EU"),
    ("GET", "/v3/customs/declarations/{id}", "Read a declaration and its status", 50, "LF-2208", "none",
     "status is one of draft, filed, cleared, held"),
    ("POST", "/v3/returns", "Create a return label", 20, "LF-2103", "shipment_id, reason",
     "return labels are valid for 30 days"),
    ("GET", "/v3/rates", "Quote prices for a parcel", 100, "LF-2001", "from, to, weight_kg",
     "prices are in EUR without VAT"),
    ("POST", "/v3/addresses/validate", "Validate and normalise an address", 100, "LF-2001", "address",
     "returns a confidence between 0 and 1"),
    ("GET", "/v3/service-points", "Find parcel shops near an address", 100, "LF-2001", "near, radius_km",
     "radius up to 25 km"),
    ("POST", "/v3/bulk/shipments", "Create up to 500 shipments asynchronously", 2, "LF-4290",
     "shipments[] (max 500)", "returns a job id; poll GET /v3/bulk/jobs/{id}"),
    ("GET", "/v3/bulk/jobs/{id}", "Poll a bulk job", 20, "LF-1104", "none",
     "results are kept for 48 hours"),
    ("GET", "/v3/account/usage", "Usage for the current billing month", 10, "LF-1201", "month",
     "counts shipments and label renders"),
]


def _endpoint_section(e: tuple[object, ...]) -> str:
    method, path, summary, rate, error, fields, response = e
    example_path = str(path).replace("{id}", "shp_7Q2K9").replace("{label_id}", "lbl_88AZ").replace(
        "{tracking_number}", "LF123456789DE")
    return (
        h(2, f"{method} {path}")
        + p(f"{summary}. This endpoint allows {rate} requests per second per API key; above that it answers 429 "
            f"with LF-4290. The error you are most likely to see here is {error} (see the error code table).")
        + table(["Aspect", "Detail"], [["Method", str(method)], ["Path", c(str(path))],
                                      ["Rate limit", f"{rate} requests/s"], ["Important fields", str(fields)],
                                      ["Notes", str(response)]])
        + p(f"Notes: {response}. Requests are authenticated with a bearer API key; keys are scoped, and write "
            "endpoints need the matching write scope.")
        + code(f"curl -X {method} https://api.larkspur.example/{str(example_path).lstrip('/')} \\\n"
               "  -H 'Authorization: Bearer $LARKSPUR_KEY' -H 'Content-Type: application/json'", "bash",
               title="Example")
    )


add(
    "2105", "ENG", "Parcel API v3 reference", ("api", "reference"),
    p("Reference of every public endpoint of the Parcel API, version 3. Base URL "
      + c("https://api.larkspur.example") + ". Errors are listed on " + link("Parcel API error codes") + "."),
    *[_endpoint_section(e) for e in ENDPOINTS],
)

# (release, date, highlight, second change, fix, known issue)
RELEASES = [
    ("2025.1", "2025-01-09", "Shipment list can be filtered by status", "dark mode for the tenant admin",
     "CSV exports no longer cut names at 64 characters", "none"),
    ("2025.2", "2025-01-23", "Returns portal supports 14 languages", "faster tracking page on mobile",
     "pickup windows respect daylight saving time", "none"),
    ("2025.3", "2025-02-06", "ZPL labels for 300 dpi printers", "bulk cancel of up to 200 shipments",
     "duplicate hub scan events are merged", "ZPL at 300 dpi misaligns the barcode on Zebra ZD420"),
    ("2025.4", "2025-02-20", "Customs declarations accept EORI numbers per item",
     "address validation for Switzerland", "the rate quote included VAT twice for Austria", "none"),
    ("2025.5", "2025-03-06", "Bulk label reprint for a whole manifest",
     "the hubs.bulk-reprint flag is on for all tenants", "label URLs no longer expire early", "none"),
    ("2025.6", "2025-03-20", "Webhook secret rolling with a 24-hour overlap", "webhook delivery log in the admin UI",
     "webhooks retried after a 410 are stopped", "none"),
    ("2025.7", "2025-04-03", "Service point search by radius up to 25 km", "opening hours on service points",
     "map markers no longer overlap at high zoom", "none"),
    ("2025.8", "2025-04-17", "Parcel weight limit raised from 30 kg to 31.5 kg",
     "freight booking link for heavier parcels", "weights in pounds are converted correctly", "none"),
    ("2025.9", "2025-05-02", "Asynchronous bulk shipment creation (up to 500 per job)", "bulk job results for 48 hours",
     "the shipment list counts cancelled shipments correctly", "bulk jobs over 400 shipments can time out"),
    ("2025.10", "2025-05-15", "Delivery window changes by the receiver", "SMS notifications in Polish",
     "the returns portal accepts postcodes with spaces", "none"),
    ("2025.11", "2025-05-29", "Public tracking answers cached for 60 seconds", "tracking in Czech",
     "tracking numbers with lowercase letters are found", "none"),
    ("2025.12", "2025-06-12", "Usage endpoint for the billing month", "usage chart in the admin UI",
     "invoices show the tenant's VAT id", "none"),
    ("2025.13", "2025-06-26", "Carrier connect for PostNord", "pickup booking for PostNord",
     "manifest closing no longer fails for empty manifests", "PostNord pickups cannot be cancelled yet"),
    ("2025.14", "2025-07-10", "Audit log export as CSV", "audit log filter by user",
     "the admin UI session lasts 12 hours as documented", "none"),
    ("2025.15", "2025-07-24", "Two-factor login with passkeys in the tenant admin", "API key expiry dates",
     "revoked keys are rejected within 10 seconds instead of 5 minutes", "none"),
    ("2025.16", "2025-08-07", "Route planner handles 180 stops per route", "route export to GPX",
     "stops with the same address are merged", "none"),
    ("2025.17", "2025-08-21", "Return labels valid for 30 days instead of 14", "return reasons are reported",
     "QR return codes render on small phones", "none"),
    ("2025.18", "2025-09-04", "Customs status 'held' with the authority's reason",
     "email alert when a declaration is held", "HS codes with 10 digits are accepted", "none"),
    ("2025.19", "2025-09-18", "Address validation returns a confidence score", "geocoder uses postcode synonyms",
     "street names with apostrophes are matched", "none"),
    ("2025.20", "2025-10-02", "Manifest PDF with a barcode per parcel", "manifest email to the carrier",
     "manifests of more than 1,000 parcels open faster", "none"),
    ("2025.21", "2025-10-16", "Webhooks for customs events", "event filter per webhook endpoint",
     "webhook timestamps are in UTC", "none"),
    ("2025.22", "2025-10-30", "Label archive search by reference", "labels kept for 2 years in the archive",
     "archive downloads work in Safari", "none"),
    ("2025.23", "2025-11-13", "Tenant admin in Italian", "saved filters on the shipment list",
     "filters keep their state after a reload", "none"),
    ("2025.24", "2025-11-27", "Rate quotes for pallets", "pallet labels (A5)",
     "rate quotes for islands include the surcharge", "pallet quotes are not available for Norway"),
]


def _release_section(r: tuple[str, ...]) -> str:
    release, date, highlight, second, fix, issue = r
    issue_block = (warning(p(f"Known issue in {release}: {issue}."), title="Known issue") if issue != "none"
                   else p(f"No known issues were reported for {release}."))
    return (
        h(2, f"Release {release} ({date})")
        + p(f"Release {release} shipped on {date} with the release train. Highlight: {highlight}.")
        + ul(f"New: {highlight}.", f"New: {second}.", f"Fixed: {fix}.")
        + issue_block
        + table(["Area", "Change in " + release], [["Highlight", highlight], ["Also new", second], ["Fixed", fix],
                                                    ["Known issue", issue]])
        + p(f"Upgrade notes for {release}: no action is needed for API clients; the change '{second}' is visible to "
            "every tenant at once, without a feature flag. Support agents got a short briefing on the highlight in "
            "the week before the train, and the tenant admin's 'What's new' panel links to this section.")
        + p("Customers were informed through the changelog and the in-app announcement; enterprise customers also "
            "received the notes from their customer success manager the day before.")
    )


add(
    "2501", "PRD", "Release notes 2025", ("release",),
    p("Every release of 2025 with its date, changes, fixes and known issues, newest last. The process is described "
      "in " + link("Release process") + "."),
    *[_release_section(r) for r in RELEASES],
)

PAGES.sort(key=lambda pg: pg.id)
