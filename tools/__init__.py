"""Developer tools that are not part of the installed dcign_tf package; run them from the repository root as
`python -m tools.<name>` (tools.contact_sheet draws docs/faces_contact_sheet.png)."""
