"""``genattr reproduce``: the papers' experiments on a real chat model, resumable, and the document
``docs/real-model.md`` rebuilt from their stored rows.

Each study is a module of this package with a :class:`~genattr.reproduce.common.Study`:

* ``gilot-table1`` (:mod:`.gilot_table1`): GiLOT Tables 1 and 6, MoRF / LeRF / ABPC and time per sample;
* ``gilot-ablations`` (:mod:`.gilot_ablations`): GiLOT Table 3, beam size, Figure 3 and Table 8;
* ``aieg`` (:mod:`.aieg`): AIEG Tables 1-2 and Figure 5 on SST-2;
* ``xprompt`` (:mod:`.xprompt`): XPrompt Table 1, Figure 3, Table 4 and Table 2;
* ``icl`` (:mod:`.icl`): GiLOT Section 5.1 and Tables 4-5, the query weight and in-context learning;
* ``bias`` (:mod:`.bias`): GiLOT Section 5.2, the gender probe.

Rows live under ``OUT/rows/STUDY.jsonl`` and the document beside ``OUT`` (``OUT.md``), built by
:mod:`.report` from the rows alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Study

DEFAULT_OUT = "docs/real-model"
"""Where the rows and plots live; the document is this path with ``.md``."""
DEFAULT_MODEL = "smollm2"

STUDIES = {
    "gilot-table1": "gilot_table1",
    "gilot-ablations": "gilot_ablations",
    "aieg": "aieg",
    "xprompt": "xprompt",
    "icl": "icl",
    "bias": "bias",
}
"""Study name -> module of this package that defines its ``STUDY``."""


def study(name: str) -> Study:
    """The study called ``name`` (a key of :data:`STUDIES`)."""
    return importlib.import_module(f"{__name__}.{STUDIES[name]}").STUDY
