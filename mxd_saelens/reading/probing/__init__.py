"""Sparse probing: how well one code of a layer picks out a class of texts (docs/design.md §2.4).

Protocol of the MxD paper, per labelled set:

- sample-level: each text becomes one feature vector, the layer's codes mean-pooled over the
  text's first ``context_size`` tokens (its last ones for code, where a licence header would
  otherwise dominate); token-level: the codes at one named token position;
- 80/20 stratified split, seed 42;
- per class (one-vs-rest): the ``n_candidates`` = 100 codes with the largest class-mean
  difference on the train split, a class-balanced L2 logistic regression on each single code,
  and the best test F1 among them.

"Codes" come from a :class:`CodeSource`: an MxD's expert coefficients or a transcoder's latents
(:class:`LayerCodes`), or the base MLP's neurons (:class:`NeuronCodes`), the reference a
replacement layer's codes should match or beat.

Labelled sets: the bundled corpus (:func:`corpus_labelled_set`) and the paper's five Hugging
Face sets (:data:`HUB_SETS`), each of which also reads a local file with the hub set's columns.

Modules: :mod:`~mxd_saelens.reading.probing.codes` (where codes come from),
:mod:`~mxd_saelens.reading.probing.labelled_sets` (labelled texts),
:mod:`~mxd_saelens.reading.probing.features` (pooled and token-level features),
:mod:`~mxd_saelens.reading.probing.probe` (the probes and their table).
"""

from mxd_saelens.reading.probing.codes import CodeSource, LayerCodes, NeuronCodes, hook_activations
from mxd_saelens.reading.probing.features import (
    PAPER_CONTEXT,
    pooled_features,
    resolve_context,
    text_window,
    token_features,
    token_position,
)
from mxd_saelens.reading.probing.labelled_sets import (
    AG_NEWS_CLASSES,
    BIOS_PROFESSIONS,
    EUROPARL_PAIRS,
    HUB_SETS,
    LabelledTexts,
    ag_news,
    amazon_sentiment,
    bias_in_bios,
    corpus_labelled_set,
    europarl,
    github_code,
    labelled_set,
)
from mxd_saelens.reading.probing.probe import (
    ClassScore,
    ProbeResult,
    check_labels,
    compare_probes,
    format_probe_table,
    probe_features,
    sparse_probe,
)

__all__ = [
    "AG_NEWS_CLASSES",
    "BIOS_PROFESSIONS",
    "EUROPARL_PAIRS",
    "HUB_SETS",
    "PAPER_CONTEXT",
    "ClassScore",
    "CodeSource",
    "LabelledTexts",
    "LayerCodes",
    "NeuronCodes",
    "ProbeResult",
    "ag_news",
    "amazon_sentiment",
    "bias_in_bios",
    "check_labels",
    "compare_probes",
    "corpus_labelled_set",
    "europarl",
    "format_probe_table",
    "github_code",
    "hook_activations",
    "labelled_set",
    "pooled_features",
    "probe_features",
    "resolve_context",
    "sparse_probe",
    "text_window",
    "token_features",
    "token_position",
]
