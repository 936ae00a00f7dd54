"""Secure rounds: a model update as words for secagg and back (``round``), a carrier of plain bytes
(``transport``) and Flower's Message API (``flower``, needs the ``flower`` extra)."""
