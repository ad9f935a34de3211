"""Method and checkpoint specs: the one parser of ``sift``, ``sift+ecc``, ``model.ckpt+ecc``.

Users name what to run with short strings — in ``evaluate.py``'s ``methods=[...]`` and
``checkpoints=[...]`` and in ``hdreg align`` — and may end them in ``+<refinement>`` (``+ecc``):
the estimates are then refined (:class:`hdreg.estimators.refinement.RefinedEstimator`) by the
refiner configured in ``hdreg/configs/method/<refinement>.yaml`` (in ``evaluate.py``:
``method_params.ecc``, overridable from the command line). This module turns such strings into
estimators:

* a *method* spec is ``<name>`` or ``<name>+<refinement>``, ``<name>`` a config of
  ``hdreg/configs/method/``;
* a *checkpoint* spec is a checkpoint (a path, or a name that
  :func:`hdreg.estimators.learned.resolve_checkpoint` resolves), optionally followed by
  ``+<refinement>``. No guessing: when the whole spec is an existing file it is the checkpoint,
  whatever '+' its name holds; otherwise a final ``+<known refinement>`` is the refinement;
* :func:`parse_spec` takes either (what :func:`hdreg.estimate` is given) and refuses anything
  else with one error that lists what is valid;
* :func:`resolve` builds the estimator of any spec: the one way from a name to an estimator,
  used by :func:`hdreg.estimate`, ``hdreg align``, ``evaluate.py`` (:func:`build_estimators`)
  and training's test table.

Example:
    >>> parse_method_spec("sift+ecc", ["sift", "ecc"])
    MethodSpec(text='sift+ecc', method='sift', checkpoint=None, refine='ecc')
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdreg.estimators.base import Estimator
from hdreg.estimators.downsize import Downsized, check_max_side
from hdreg.estimators.refinement import RefinedEstimator

__all__ = [
    "REFINEMENTS",
    "MethodSpec",
    "build_estimators",
    "check_method_specs",
    "parse_checkpoint_spec",
    "parse_method_spec",
    "parse_spec",
    "resolve",
]

# Refinements a spec may end in ('+ecc', '+adapt', chained: '+adapt+ecc'): each is a method
# config that builds a refiner, applied in the order written.
REFINEMENTS = ("ecc", "adapt")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed spec: ``method`` (a ``hdreg/configs/method`` name) or ``checkpoint`` (a file), and
    the ``refine`` ments to apply in order, joined by ``+`` (``"adapt+ecc"``; ``None``: none).
    ``text`` is the spec as written."""

    text: str
    method: str | None
    checkpoint: Path | None
    refine: str | None


def _check_refine(refine: str, text: str) -> None:
    if refine not in REFINEMENTS:
        raise ValueError(
            f"unknown refinement {refine!r} in {text!r}: valid refinements are "
            f"{', '.join(REFINEMENTS)} (as in sift+ecc or model.ckpt+ecc)"
        )


def _check_not_empty(text: str, base: str, plus: str, what: str, example: str) -> None:
    """``ValueError`` for an empty spec or a ``+<refinement>`` with nothing before it."""
    if not text.strip():
        raise ValueError(f"empty {what} spec {text!r}: give {example}, optionally followed by +ecc")
    if plus and not base.strip():
        raise ValueError(
            f"{what} spec {text!r} is a refinement with no {what} before it: write "
            f"<{what}>{text} (e.g. {example.split(' ')[-1]}{text})"
        )


def _split_method(text: str, known: Iterable[str]) -> tuple[str, str, str]:
    """``text`` as ``(method, "+", refinements)``. A known name that holds a ``+`` (a detector and
    its matcher, ``disk+lightglue``) is one method: ``disk+lightglue+ecc`` is it refined by ECC.

    >>> _split_method("disk+lightglue+ecc", ["disk+lightglue", "sift"])
    ('disk+lightglue', '+', 'ecc')
    """
    whole = [k for k in known if "+" in k and (text == k or text.startswith(k + "+"))]
    if whole:
        name = max(whole, key=len)
        return name, text[len(name) : len(name) + 1], text[len(name) + 1 :]
    return text.partition("+")


def parse_method_spec(text: str, known: Iterable[str]) -> MethodSpec:
    """``"sift"`` / ``"sift+ecc"`` / ``"disk+lightglue+ecc"`` → :class:`MethodSpec`; ``known``:
    the valid method names.

    Raises ``ValueError`` naming the valid methods or refinements.
    """
    text = str(text)
    known = list(known)
    base, plus, refine = _split_method(text, known)
    _check_not_empty(text, base, plus, "method", "a method name such as sift")
    known = sorted(known)
    if base not in known:
        raise ValueError(
            f"unknown method {text!r}: valid methods are {', '.join(known)} (each a config in "
            f"hdreg/configs/method/), optionally followed by +{'/+'.join(REFINEMENTS)}"
        )
    for step in refine.split("+") if plus else ():
        _check_refine(step, text)
    return MethodSpec(text, base, None, refine or None)


def parse_checkpoint_spec(text: str) -> MethodSpec:
    """``"dir/m.ckpt"`` / ``"dir/m.ckpt+ecc"`` / a checkpoint name → :class:`MethodSpec`.

    The whole ``text`` is the checkpoint when it is an existing file; else, when it ends in
    ``+<refinement>`` (or several: ``+adapt+ecc``), the part before is the checkpoint. A
    ``+<suffix>`` that is not a known refinement after an existing file is an error; otherwise
    the checkpoint is resolved by :func:`~hdreg.estimators.learned.resolve_checkpoint` (whose
    loader reports a missing file).
    """
    from hdreg.estimators.learned import resolve_checkpoint

    text = str(text)
    if text.strip() and Path(text).expanduser().is_file():
        return MethodSpec(text, None, resolve_checkpoint(text), None)
    base, plus, suffix = text.rpartition("+")
    _check_not_empty(
        text,
        base,
        plus,
        "checkpoint",
        "a checkpoint file or a shipped model name such as iterative",
    )
    # strip known refinements from the end until what is left is a file or has none
    refine: list[str] = []
    head = text
    while not Path(head).expanduser().is_file():
        before, sep, last = head.rpartition("+")
        if not sep or last not in REFINEMENTS:
            break
        refine.insert(0, last)
        head = before
    if refine:
        _check_not_empty(text, head, "+", "checkpoint", "a shipped model name such as iterative")
        return MethodSpec(text, None, resolve_checkpoint(head), "+".join(refine))
    if plus and Path(base).expanduser().is_file():
        _check_refine(suffix, text)
    return MethodSpec(text, None, resolve_checkpoint(text), None)


def _unknown(spec: object) -> ValueError:
    """The error for a spec that is neither a method, nor a shipped model, nor a file."""
    from hdreg.config import method_names
    from hdreg.weights import shipped_weights

    return ValueError(
        f"unknown method {spec!r}: valid methods are {', '.join(method_names())}; shipped "
        f"models: {', '.join(sorted(n for n, w in shipped_weights().items() if not w.part_of))}; "
        "or the path of an existing checkpoint "
        f"file; each optionally followed by +{' or +'.join(REFINEMENTS)}"
    )


def parse_spec(spec: str | os.PathLike[str]) -> MethodSpec:
    """Any spec a user may name: a method (``"sift"``, ``"sift+ecc"``), a shipped model
    (``"wide"``, ``"iterative+ecc"``) or an existing checkpoint file (``"runs/m.ckpt+ecc"``).

    ``ValueError`` for anything else, listing the valid methods and shipped models (or saying
    that the path is a folder).

    >>> parse_spec("iterative+ecc").refine
    'ecc'
    >>> parse_spec("siftt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'siftt': valid methods are adapt, akaze, ...
    """
    from hdreg.config import method_names

    if not isinstance(spec, str | os.PathLike) or not str(os.fspath(spec)).strip():
        raise _unknown(spec)
    text = str(os.fspath(spec))
    names = method_names()
    if _split_method(text, names)[0] in names:
        return parse_method_spec(text, names)
    parsed = parse_checkpoint_spec(text)
    if parsed.checkpoint is not None and parsed.checkpoint.is_file():
        return parsed
    if parsed.checkpoint is not None and parsed.checkpoint.is_dir():
        raise ValueError(f"checkpoint {parsed.checkpoint} is a folder, not a checkpoint file")
    raise _unknown(text)


def _instantiate(params: Any, **overrides: Any) -> Any:
    from hydra.utils import instantiate  # hydra only when a method_params entry is built

    return instantiate(params, **overrides)


def resolve(
    spec: str | os.PathLike[str] | MethodSpec,
    *,
    device: str = "auto",
    max_side: int | None = None,
    min_confidence: float | None = None,
    method_params: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    refiner_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    built: dict[tuple, Any] | None = None,
) -> Estimator:
    """The estimator of a method spec: the one way from a name to an estimator.

    Args:
        spec: a method (``"sift"``, ``"sift+ecc"``), a shipped model (``"wide"``,
            ``"iterative+adapt+ecc"``) or a checkpoint file (``"runs/m.ckpt+ecc"``), parsed by
            :func:`parse_spec`; or a spec already parsed by :func:`parse_method_spec` or
            :func:`parse_checkpoint_spec` (a list that admits only one kind).
        device: for checkpoints and shipped models (``"auto"``, ``"cpu"``, ``"cuda"``, …).
        max_side: when given, the estimator runs on copies of larger images downsized to this
            longer side (:class:`~hdreg.estimators.downsize.Downsized`); 0 or ``None``: never.
        min_confidence: for a checkpoint of a plain network, report estimates under this
            confidence as failed (``hdreg align`` and :func:`hdreg.estimate` do, with
            :data:`~hdreg.estimators.base.ALIGN_MIN_CONFIDENCE`; see
            :class:`~hdreg.estimators.learned.HomographyNetEstimator`); with a refinement, the
            refined estimate is judged.
        method_params: method configs by name (``evaluate.py``'s ``method_params``); a name
            missing here is read from ``hdreg/configs/method/<name>.yaml``.
        overrides: constructor arguments that replace the method config's (``hdreg align
            --ratio``…; not for checkpoints).
        refiner_overrides: constructor arguments of refiners by name (``hdreg align --adapt N``:
            ``{"adapt": {"steps": N}}``).
        built: a cache of the estimators and refiners built so far, shared between calls:
            ``x``, ``x+adapt`` and ``x+adapt+ecc`` then share their common part (the evaluation
            runs it once).

    Raises:
        ValueError: an unknown method, shipped model or refinement (naming the valid ones), a
            refinement config that builds no refiner, or a bad ``max_side``.

    >>> resolve("sift+ecc").name
    'sift+ecc'
    >>> resolve("ecc", max_side=1000).max_side
    1000
    """
    from hdreg.config import method_estimator

    max_side = check_max_side(max_side)
    if not isinstance(spec, MethodSpec):
        spec = parse_spec(spec)
    params = method_params if method_params is not None else {}

    def make(name: str, **kw: Any) -> Any:
        # evaluate.py's method_params (overridable; Hydra's keys spell a name's '+' as '_'),
        # else hdreg/configs/method/<name>.yaml
        key = name if name in params else name.replace("+", "_")
        return _instantiate(params[key], **kw) if key in params else method_estimator(name, **kw)

    cache = built if built is not None else {}
    key: tuple = (spec.method, str(spec.checkpoint) if spec.checkpoint is not None else None)
    if (*key, "") in cache:
        estimator = cache[(*key, "")]
    elif spec.checkpoint is not None:
        from hdreg.estimators.learned import load_checkpoint_estimator  # torch

        # with a refinement, the confidence is judged on the refined estimate (below)
        estimator = load_checkpoint_estimator(
            spec.checkpoint, device=device,
            min_confidence=min_confidence if spec.refine is None else None,
        )  # fmt: skip
    elif spec.method is not None:
        estimator = make(spec.method, **dict(overrides or {}))
    else:
        raise ValueError(f"spec {spec.text!r} names neither a method nor a checkpoint")
    if not (spec.checkpoint is not None and min_confidence is not None):
        cache.setdefault((*key, ""), estimator)
    done = ""
    for step in spec.refine.split("+") if spec.refine else ():
        done = f"{done}+{step}" if done else step
        if (*key, done) in cache:
            estimator = cache[(*key, done)]
            continue
        if ("+", step) not in cache:
            refiner = make(step, **dict((refiner_overrides or {}).get(step, {})))
            if not callable(getattr(refiner, "refine", None)):
                raise ValueError(
                    f"the {step} config must build a refiner (an estimator with a refine "
                    f"method), got {type(refiner).__name__}"
                )
            cache[("+", step)] = refiner
        estimator = RefinedEstimator(estimator, cache[("+", step)])
        cache[(*key, done)] = estimator
    if spec.refine is not None and spec.checkpoint is not None and min_confidence is not None:
        from hdreg.estimators.learned import ConfidenceGate  # torch

        estimator = ConfidenceGate(estimator, min_confidence)
    return Downsized(estimator, max_side) if max_side is not None else estimator


def check_method_specs(
    methods: Iterable[str], method_params: Mapping[str, Any] | None = None
) -> list[MethodSpec]:
    """Parse ``evaluate.py``'s ``methods`` (and training's ``test_methods``) against the method
    names (``hdreg/configs/method/`` plus any ``method_params`` entry); ``ValueError`` for an
    unknown name, before any work starts.

    >>> [s.text for s in check_method_specs(["identity", "sift+ecc"])]
    ['identity', 'sift+ecc']
    """
    from hdreg.config import method_names

    known = sorted(set(method_names()) | set((method_params or {}).keys()))
    return [parse_method_spec(str(m), known) for m in methods]


def build_estimators(
    methods: Iterable[str] | str,
    method_params: Mapping[str, Any] | None = None,
    checkpoints: Iterable[str] = (),
    device: str = "auto",
) -> list[Estimator]:
    """The estimators of ``evaluate.py``'s ``methods`` and ``checkpoints`` lists, in order.

    ``methods`` are parsed by :func:`check_method_specs`, ``checkpoints`` by
    :func:`parse_checkpoint_spec` (a method name is not a checkpoint); all are built by
    :func:`resolve` with one cache, so that ``x``, ``x+ecc`` and ``x+adapt+ecc`` share ``x``
    (the runner estimates it once). Refiners come from ``method_params.<name>`` (overridable:
    ``method_params.ecc.refine_levels=1``). ``ValueError`` when both lists are empty.
    """
    if isinstance(methods, str):
        methods = [methods]
    specs = check_method_specs(methods, method_params)
    specs += [parse_checkpoint_spec(str(c)) for c in checkpoints or ()]
    if not specs:
        raise ValueError("nothing to evaluate: give methods=[...] and/or checkpoints=[...]")
    built: dict[tuple, Any] = {}
    return [
        resolve(spec, method_params=method_params, device=device, built=built) for spec in specs
    ]
