"""The GPU-requirements fact table (llm_quant/upstream/gpu_requirements.yaml): its shape, names and citations.

The package's own model (llm_quant.model.preflight) validates it, strictly, so a typo in a row fails the suite.
"""

from __future__ import annotations

import importlib
import re
from importlib import resources

import pytest
import yaml
from pydantic import ValidationError

from llm_quant.model.preflight import GpuRequirements, GpuRule

_LINE = re.compile(r"^\d+(-\d+)?$")


def _known_names() -> tuple[set[str], set[str]]:
    """qformat and KV-cache names as the package defines them (llm_quant.formats, or quant_common.qformats once the
    format table moves below both llm_quant and triton_backend)."""
    for module_name in ("llm_quant.formats", "quant_common.qformats"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "QFORMAT_NAMES") and hasattr(module, "KV_NAMES"):
            return set(module.QFORMAT_NAMES), set(module.KV_NAMES)
    pytest.fail("neither llm_quant.formats nor quant_common.qformats defines QFORMAT_NAMES and KV_NAMES")


def _raw() -> object:
    text = resources.files("llm_quant.upstream").joinpath("gpu_requirements.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def table() -> GpuRequirements:
    return GpuRequirements.model_validate(_raw())


def test_every_rule_names_a_known_format(table):
    qformats, kv = _known_names()
    allowed = qformats | {f"kv:{name}" for name in kv}
    unknown = sorted({rule.name for rule in table.rules} - allowed)
    assert not unknown, f"rules name unknown formats: {unknown}"


def test_every_rule_states_a_requirement_once(table):
    seen: set[tuple[str, str]] = set()
    for rule in table.rules:
        kinds = [kind for kind in ("min_sm", "refused_sm") if getattr(rule, kind) is not None]
        assert kinds, f"{rule.name}: the row states neither min_sm nor refused_sm"
        for kind in kinds:
            assert (rule.name, kind) not in seen, f"{rule.name}: two rows give {kind}"
            seen.add((rule.name, kind))


def test_a_refused_range_starts_above_the_minimum(table):
    minimum = {rule.name: rule.min_sm for rule in table.rules if rule.min_sm is not None}
    for rule in table.rules:
        if rule.refused_sm is not None and rule.name in minimum:
            assert rule.refused_sm[0] > minimum[rule.name], f"{rule.name}: refused below its own minimum"


def test_every_rule_cites_a_line_at_a_tag_or_commit(table):
    for rule in table.rules:
        src = rule.source
        assert "/" in src.repo and src.path, rule
        assert src.tag or src.commit, f"{rule.name}: {src.cite()} has neither tag nor commit"
        if src.commit is not None:
            assert re.fullmatch(r"[0-9a-f]{40}", src.commit), f"{rule.name}: commit {src.commit!r} is not a full SHA"
        assert src.line and _LINE.match(src.line), f"{rule.name}: {src.cite()} needs a line like '412' or '410-415'"
        if "-" in src.line:
            lo, hi = (int(part) for part in src.line.split("-"))
            assert lo < hi, f"{rule.name}: line range {src.line} runs backwards"
        assert rule.upstream_message.strip() and rule.releases.strip(), rule.name
        if not src.pinned:
            assert src.commit, f"{rule.name}: a row that is not tag-pinned must name the commit it was read at"


def test_model_rejects_a_stray_key_and_a_backwards_range():
    """The table's model is strict: otherwise a misspelt key in the table would be ignored silently."""
    row = _raw()["rules"][0]
    with pytest.raises(ValidationError):
        GpuRule.model_validate({**row, "min_sm_typo": 80})
    with pytest.raises(ValidationError):
        GpuRule.model_validate({**row, "refused_sm": [120, 100]})
