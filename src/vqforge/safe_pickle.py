"""Read PyTorch pickle checkpoints (`torch.save` files, PyTorch Lightning `.ckpt`) without running pickled code.

A pickle can name any importable callable and ask the loader to call it (`os.system` via `__reduce__` is the classic
example), so a plain `torch.load` of an untrusted file executes code. vqforge unpickles with a restricted unpickler:

- allowed: tensors and storages and the functions that rebuild them, dtypes, devices, `OrderedDict`, plain containers,
  numbers, strings, numpy arrays and scalars (Lightning stores some metrics as numpy scalars);
- replaced by an inert `InertObject`: metadata classes that training frameworks store next to the weights
  (`pytorch_lightning.*` / `lightning.*` such as `AttributeDict` or the callback classes used as dict keys,
  `omegaconf.*` configs, `argparse.Namespace` hyper-parameters). Nothing is imported for them, and the placeholder
  only records the arguments and state it was given, so Lightning need not be installed;
- everything else (and state written onto anything that is not a plain data object) is refused with a
  `CheckpointError`: the file is not loaded.
"""

from __future__ import annotations

import _compat_pickle
import collections
import datetime
import io
import pathlib
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError

# classes stored as metadata by training frameworks: replaced by InertObject instead of being imported
_INERT_MODULE_ROOTS = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf")
_INERT_NAMES = {"argparse.Namespace"}

_SAFE_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
                  "bytearray", "slice", "range", "object")

_TENSOR_REBUILD_FUNCTIONS = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_qtensor",
    "_rebuild_wrapper_subclass",
)


class InertObject(dict):
    """Stand-in for a pickled object of a class vqforge does not import (e.g. Lightning's `AttributeDict`).

    Holds what the pickle gave it: dict items (for dict subclasses), constructor `args`, and `state`
    (usually the original object's `__dict__`, e.g. the fields of an `argparse.Namespace`). It runs no code.
    Subclasses are created per pickled class name; `qualname` says which class it replaces.
    """

    qualname = "?"

    # pickle creates instances either by calling the class (REDUCE) or by `cls.__new__(cls, *args)` (NEWOBJ),
    # so the arguments are recorded in __new__ and __init__ must not hand them to dict
    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce__(self):  # pickling a placeholder again keeps it a placeholder
        return (_restore_inert, (self.qualname, self.args, dict(self), self.state))

    def __repr__(self) -> str:
        parts = []
        if self.args:
            parts.append(f"args={self.args!r}")
        if len(self):
            parts.append(f"items={dict(self)!r}")
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        return f"<inert {self.qualname} {' '.join(parts)}>".replace(" >", ">")


def _restore_inert(qualname: str, args: tuple, items: dict, state: Any) -> InertObject:
    obj = _inert_class(qualname)(*args)
    obj.update(items)
    obj.state = state
    return obj


_INERT_CLASSES: dict[str, type[InertObject]] = {}


def _inert_class(qualname: str) -> type[InertObject]:
    cls = _INERT_CLASSES.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (InertObject,), {"qualname": qualname, "__module__": __name__})
        _INERT_CLASSES[qualname] = cls
    return cls


def _allowed_globals() -> dict[str, Any]:
    """Fully qualified name -> object, for everything a weights checkpoint legitimately refers to."""
    import builtins
    import codecs

    allowed: dict[str, Any] = {f"builtins.{name}": getattr(builtins, name) for name in _SAFE_BUILTINS}
    allowed.update({
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "collections.defaultdict": collections.defaultdict,
        # protocol-2 pickles encode bytes as _codecs.encode(str, "latin1")
        "_codecs.encode": codecs.encode,
        "torch.Size": torch.Size,
        "torch.Tensor": torch.Tensor,
        "torch.device": torch.device,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "pathlib.PosixPath": pathlib.PosixPath,
        "pathlib.WindowsPath": pathlib.WindowsPath,
        "pathlib.PurePosixPath": pathlib.PurePosixPath,
        "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
        "datetime.datetime": datetime.datetime,
        "datetime.date": datetime.date,
        "datetime.timedelta": datetime.timedelta,
        "typing.Any": Any,
    })
    get_layout = getattr(torch.serialization, "_get_layout", None)
    if get_layout is not None:
        allowed["torch.serialization._get_layout"] = get_layout
    for name in _TENSOR_REBUILD_FUNCTIONS:
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            allowed[f"torch._utils.{name}"] = fn
    for name in dir(torch):  # dtypes (torch.float32, ...) and memory formats / layouts, which are plain values
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)):
            allowed[f"torch.{name}"] = value
    try:
        import numpy as np
    except ImportError:  # numpy is optional for reading checkpoints
        return allowed
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; pickles use either name
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{mod}._reconstruct"] = core.multiarray._reconstruct
        allowed[f"{mod}.scalar"] = core.multiarray.scalar
    allowed["numpy.ndarray"] = np.ndarray
    allowed["numpy.dtype"] = np.dtype
    return allowed


_ALLOWED: dict[str, Any] | None = None


def _build_target_ok(inst: Any) -> bool:
    """Whether pickle's BUILD (set state) may run on `inst`: only data objects, never classes or functions."""
    if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
        return False
    ok: tuple[type, ...] = (torch.Tensor, collections.OrderedDict, collections.Counter, InertObject)
    try:
        import numpy as np

        ok += (np.ndarray, np.dtype, np.generic)
    except ImportError:
        pass
    return isinstance(inst, ok)


def _refuse(source: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{source}: the file contains code: it refers to `{what}`, which unpickling would import and may run. "
        "vqforge only reads tensors and plain data from pickle files, so the file was not loaded.\n"
        "  fix: if the file comes from a source you trust, re-save only its weights in Python "
        "(e.g. `torch.save(ckpt['state_dict'], 'weights.pt')`) or convert them to safetensors, and load that file"
    )


class _RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with an allow-list for globals and a guarded BUILD opcode."""

    source = "<checkpoint>"
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        if self.proto < 3 and self.fix_imports:  # protocol 0-2 pickles use Python 2 names (__builtin__.set)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if module.split(".", 1)[0] in _INERT_MODULE_ROOTS or qualname in _INERT_NAMES:
            return _inert_class(qualname)
        raise _refuse(self.source, qualname)

    def _load_build(self) -> None:
        inst = self.stack[-2]  # stack: [..., inst, state]
        if not _build_target_ok(inst):
            raise _refuse(self.source, f"state of {type(inst).__module__}.{type(inst).__qualname__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def _pickle_module(source: str) -> types.ModuleType:
    """A module object that torch.load accepts as `pickle_module` (needs `Unpickler` and `load`)."""
    mod = types.ModuleType("vqforge_safe_pickle")

    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.source = source

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    return mod


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a `torch.save` / Lightning `.ckpt` file with the restricted unpickler. Returns the pickled object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file\n  fix: check the path to the checkpoint")
    source = str(path)
    try:
        return torch.load(path, map_location=map_location, pickle_module=_pickle_module(source), weights_only=False)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, TypeError,
            AttributeError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path}: cannot read it as a PyTorch checkpoint ({type(e).__name__}: {e})\n"
            "  fix: pass a file written by torch.save or PyTorch Lightning (.ckpt/.pt/.pth); for safetensors files "
            "use the .safetensors path"
        ) from e


def load_checkpoint_bytes(data: bytes, source: str = "<bytes>", map_location: str | torch.device = "cpu") -> Any:
    """Like `load_checkpoint`, for an in-memory file."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, pickle_module=_pickle_module(source),
                          weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:  # any parse failure of untrusted bytes is a bad checkpoint
        raise CheckpointError(f"{source}: cannot read it as a PyTorch checkpoint ({type(e).__name__}: {e})") from e


def extract_state_dict(obj: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint: Lightning's `obj["state_dict"]`, or `obj` itself if it is one."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    keys = list(obj)[:10] if isinstance(obj, Mapping) else None
    raise CheckpointError(
        f"{source}: holds no state dict (found {type(obj).__name__}"
        + (f" with keys {keys}" if keys is not None else "")
        + ")\n  fix: pass a Lightning .ckpt (with a 'state_dict' entry) or a torch.save(model.state_dict()) file"
    )


def load_state_dict_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load the weights from a pickle checkpoint file (Lightning `.ckpt` or a saved state dict)."""
    return extract_state_dict(load_checkpoint(path, map_location), str(path))


__all__ = ["InertObject", "load_checkpoint", "load_checkpoint_bytes", "extract_state_dict", "load_state_dict_file"]
