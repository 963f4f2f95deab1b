"""Your own PyTorch or ONNX model as a :class:`~undesirable_jax.models.LoadedModel` (for the CLI).

    --model path/to/model.onnx          an ONNX file, run by ONNX Runtime
    --model torch:MODULE:FUNCTION       FUNCTION() (or FUNCTION(weights)) returns a torch.nn.Module

Both become black-box classifiers (:func:`undesirable_jax.from_onnx`, :func:`undesirable_jax.from_torch`).
What a Flax ``LoadedModel`` carries itself comes from :class:`ExternalOptions`: the class names (a
file, one name per line; default ImageNet's when K = 1000, else ``class_0 …``) and the preprocessing
(a :class:`~undesirable_jax.data.Preprocessor`: torchvision's ImageNet recipe by default; a JSON file
with its fields, then the size / resize / mean / std options on top). An ONNX graph that declares its
input size sets the default size and channels; any input size is reached as torchvision's recipe
does, the short side resized to ``int(side / 0.875)`` and a centre crop (256 → 224 for 224²).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.images import IMAGENET_CLASSES
from ..data.preprocess import TORCHVISION, Preprocessor
from ..data.specs import read_preprocess, read_text
from .registry import LoadedModel


@dataclasses.dataclass(frozen=True)
class ExternalOptions:
    """What an ONNX or PyTorch model does not say itself (None: the default).

    ``class_names``: a text file, one name per line. ``preprocess``: a JSON file with any of
    ``size`` ([h, w]), ``resize`` (short side before the centre crop, or null), ``mean``, ``std`` (per
    channel, on the 0..255 scale), ``grayscale``, ``resample``. ``input_size``, ``resize``, ``mean``,
    ``std``: the same, overriding the file. ``outputs``: what the model returns (None: "auto", decided
    from its output on the image). ``input_layout``: "NCHW" / "NHWC" (None: NCHW for torch, the
    graph's for ONNX).
    """

    class_names: str | os.PathLike | None = None
    preprocess: str | os.PathLike | None = None
    input_size: tuple[int, ...] | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    outputs: str | None = None
    input_layout: str | None = None

    def given(self) -> list[str]:
        """The names of the options that were set."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


def check_external_only(spec: str, given: Sequence[str]) -> None:
    """Refuse the options of :class:`ExternalOptions` (``given``: their field names) for a model that is not an
    ONNX file or a torch function: they would be ignored."""
    if given and not is_external(spec):
        raise ValueError(f"--{given[0].replace('_', '-')}: only for --model *.onnx or torch:MODULE:FUNCTION")


def is_external(spec: str) -> bool:
    """Whether ``--model spec`` names an ONNX file or a ``torch:MODULE:FUNCTION``."""
    return spec.startswith("torch:") or spec.lower().endswith(".onnx")


def import_function(spec: str) -> Callable:
    """``MODULE:FUNCTION`` → the function (the current directory is searched first, like ``python -m``)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"--model: expected MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"--model: cannot import module {module_name!r} ({e}); run from its folder or install it")
    except Exception as e:  # noqa: BLE001 - any error the user's module raises at import, in one line
        raise ValueError(f"--model: importing module {module_name!r} failed with {type(e).__name__}: {e}; "
                         f"{_fix_hint(e, 'fix the module')}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"--model: module {module_name!r} has no function {func_name!r}")
    return fn


def call_model_function(fn: Callable, spec: str, weights: str | os.PathLike | None) -> Any:
    """``fn()`` or ``fn(weights)`` for ``--model spec``; whatever it raises becomes one ValueError."""
    try:
        return fn() if weights is None else fn(weights)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the user's loader; its error in one line, with the likely fix
        raise ValueError(f"--model: {spec}({'' if weights is None else repr(str(weights))}) raised "
                         f"{type(e).__name__}: {e}; {_fix_hint(e, 'fix the function')}") from e


def _fix_hint(error: BaseException, default: str) -> str:
    """CUDA missing, or ``default``."""
    from ..black_boxes import call_hint

    hint = call_hint(error)
    return default if hint.startswith("fix the function") else hint


def load_external(spec: str, weights: str | os.PathLike | None, options: ExternalOptions) -> LoadedModel:
    """``--model`` for an ONNX file or ``torch:MODULE:FUNCTION`` → a :class:`LoadedModel`."""
    from .. import black_boxes

    outputs = options.outputs or "auto"
    if spec.startswith("torch:"):
        fn = import_function(spec[len("torch:"):])
        module = call_model_function(fn, spec, weights)
        clf = black_boxes.from_torch(module, name=spec, outputs=outputs, input_layout=options.input_layout or "NCHW")
        prep = preprocessor(options, None)
        name, source = spec, str(weights) if weights is not None else spec
    else:
        if weights is not None:
            raise ValueError("--weights: an ONNX file carries its weights; drop --weights")
        clf = black_boxes.from_onnx(spec, outputs=outputs, input_layout=options.input_layout)
        prep = preprocessor(options, _declared_input(clf))
        name, source = Path(spec).stem, os.fspath(spec)
    k = clf.fn.classes_for(_host_shape(clf, prep.input_shape))
    return LoadedModel(name=name, classifier=clf, class_names=class_names(options.class_names, k),
                       input_shape=prep.input_shape, preprocess=prep, weights=source)


def resolve(spec: str, weights: str | os.PathLike | None = None,
            external: ExternalOptions | None = None) -> LoadedModel:
    """Any ``--model`` → a checked :class:`LoadedModel`: a built-in name, ``MODULE:FUNCTION`` (called as
    ``function()`` or ``function(weights)``), an ONNX file or ``torch:MODULE:FUNCTION``.

    ``external``: the preprocessing and class-name options, only for the last two.
    """
    from .registry import MODEL_NAMES, check_model, load

    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"--weights: no file at {str(weights)!r}; check the path")
    options = external if external is not None else ExternalOptions()
    if is_external(spec):
        return load_external(spec, weights, options)
    check_external_only(spec, options.given())
    if ":" not in spec:
        if spec not in MODEL_NAMES:
            raise ValueError(f"--model: unknown model {spec!r}; use one of {', '.join(MODEL_NAMES)} "
                             "or MODULE:FUNCTION for your own")
        return load(spec, weights=weights)
    fn = import_function(spec)
    loaded = fn() if weights is None else fn(weights)
    if not isinstance(loaded, LoadedModel):
        raise ValueError(f"--model: {spec}() returned {type(loaded).__name__}, expected an "
                         "undesirable_jax.models.LoadedModel (classifier, class names, input shape, preprocess)")
    return check_model(loaded)


def class_names(path: str | os.PathLike | None, k: int) -> tuple[str, ...]:
    """Names from ``path`` (one per line, exactly K), else ImageNet's for K = 1000, else ``class_i``."""
    if path is None:
        return IMAGENET_CLASSES if k == len(IMAGENET_CLASSES) else tuple(f"class_{i}" for i in range(k))
    names = tuple(line.strip() for line in read_text(path, "--class-names").splitlines())
    while names and not names[-1]:
        names = names[:-1]
    if len(names) != k or not all(names):
        raise ValueError(f"--class-names: {os.fspath(path)!r} has {len(names)} lines (blank ones included), but the "
                         f"model has K = {k} classes; write one name per line")
    return names


def preprocessor(options: ExternalOptions, declared: tuple[int, int, int] | None) -> Preprocessor:
    """torchvision's ImageNet recipe, then the graph's declared (h, w, C), the JSON file, the options."""
    fields: dict[str, Any] = dataclasses.asdict(TORCHVISION)
    if declared is not None:
        fields.update(size=declared[:2], resize=_default_resize(declared[:2]))
        if declared[2] == 1:
            fields.update(grayscale=True, mean=(0.0,), std=(255.0,))
    if options.preprocess is not None:
        fields.update(_read_json(options.preprocess))
    if options.input_size is not None:
        size = tuple(options.input_size) * (2 if len(options.input_size) == 1 else 1)
        fields.update(size=size, resize=_default_resize(size) if options.resize is None else options.resize)
    fields.update({k: getattr(options, k) for k in ("resize", "mean", "std") if getattr(options, k) is not None})
    fields["size"], fields["mean"], fields["std"] = (tuple(fields[k]) for k in ("size", "mean", "std"))
    if len(fields["mean"]) == 1 and not fields["grayscale"] and options.mean is not None:
        fields["grayscale"] = True
    prep = Preprocessor(**fields)
    if declared is not None and prep.input_shape != tuple(declared):
        raise ValueError(f"--input-size / --preprocess: give input {prep.input_shape}, but the ONNX graph declares "
                         f"{tuple(declared)} (h, w, C)")
    return prep


def _default_resize(size: tuple[int, ...]) -> int:
    """The short side before the centre crop, in ImageNet's ratio 224 / 256: ``int(max(h, w) / 0.875)``
    (256 for 224²), so any input size keeps the aspect ratio instead of being squashed."""
    return int(max(size) / 0.875)


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    return read_preprocess(path, "--preprocess")


def _declared_input(clf: Any) -> tuple[int, int, int] | None:
    """(h, w, C) of an ONNX graph's input when all three are declared, else None."""
    shape = list(clf.fn.fn.session.get_inputs()[0].shape)
    hwc = shape[2:] + shape[1:2] if clf.fn.layout == "NCHW" else shape[1:]
    return tuple(hwc) if all(isinstance(d, int) for d in hwc) else None


def _host_shape(clf: Any, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The image shape the host function sees (channels first for NCHW)."""
    h, w, c = input_shape
    return (c, h, w) if clf.fn.layout == "NCHW" else (h, w, c)
