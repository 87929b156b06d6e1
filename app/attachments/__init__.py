"""Attachments: each file's text as its own document in the page's rows (issue 11).

`index.py` decides per attachment (same version: reuse what we extracted; else download, extract, record),
`extract.py` runs the extraction in a separate, limited process and picks the format module by media type,
`pdf.py`, `docx.py`, `pptx.py`, `xlsx.py` and `text.py` turn one format into Markdown with a library made for
it, and `quality.py` refuses text that only looks like text.
"""
