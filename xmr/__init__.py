"""User-side tools of xmr: the shapes demo data, the evaluation command."""
