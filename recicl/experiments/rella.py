"""ReLLa's variants of the streaming experiment: which samples their rated histories come from.

ReLLa's prompt (``prompt.format: rella``) shows one history of the user's earlier rated items,
liked or not; recicl's samples hold those as the demonstrations. Its SUBR retrieves that
history by similarity to the asked-about item instead of taking the newest: the ``semantic``
demonstrations, of an augmented copy (``samples.augment: [semantic]``) or of the main samples
(``samples.demo_policy: semantic``). ReiT tunes on the originals and their SUBR copies mixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from recicl.config import ConfigError
from recicl.data.samples_folder import SamplesFolder

#: ReLLa's tuned variants: whether the SUBR copies are mixed into tuning and give the scored
#: samples their histories (reit), or neither (rella).
RELLA_VARIANTS: dict[str, bool] = {"rella": False, "reit": True}
#: The variants whose rated histories are retrieved by similarity (ReLLa's SUBR).
SUBR_VARIANTS = ("zero-shot+subr", "reit")
#: The demonstration policy that is ReLLa's SUBR.
SUBR_POLICY = "semantic"


def check_subr_samples(samples: SamplesFolder, variants: Sequence[str]) -> None:
    """Refuse SUBR variants, before any tuning, when ``samples`` hold no semantic
    demonstrations, saying how to build them."""
    asked = [v for v in variants if v in SUBR_VARIANTS]
    selection = samples.require_manifest().selection
    if not asked or selection.demo_policy == SUBR_POLICY:
        return
    copies_demos = selection.augment_replaces != "history"
    if copies_demos and SUBR_POLICY in samples.augmented_policies():
        return
    raise ConfigError(
        f"experiment.variants {asked} read semantically retrieved rated histories (ReLLa's "
        f"SUBR), and the samples in {samples.root} have none: rebuild them with "
        "samples.augment: [semantic] (augment_replaces: demos or both), or "
        "samples.demo_policy: semantic"
    )


def subr_table(samples: SamplesFolder, evaluated: pa.Table) -> pa.Table:
    """The evaluated draw (the same samples, in the same order) with SUBR demonstrations."""
    if samples.require_manifest().selection.demo_policy == SUBR_POLICY:
        return evaluated
    periods = sorted(set(evaluated["period"].to_pylist()))
    copy = samples.read_table(periods, policy=SUBR_POLICY)
    rows = pc.index_in(evaluated["sample_id"], copy["sample_id"])
    if rows.null_count:
        raise ConfigError(f"{samples.root}: the semantic copy lacks evaluated samples; rebuild")
    return copy.take(rows).select(evaluated.column_names)
