"""xmr/: the user-side tools: the `xmr` command (xmr/cli/), the HTTP client, evaluation, the
shapes demo data, and the offline paths (Ray indexing, backend migration) that open a stopped
server's data directory. Commands reach a running service only through `xmr.client`; nothing in
app/, index/ or models/ imports from here."""
