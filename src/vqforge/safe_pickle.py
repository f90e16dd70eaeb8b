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

A small file must also not be able to make the loader allocate without bound, so sizes are checked before anything
is materialised: only a short list of callables may be *called* by the pickle (types such as `torch.Tensor` or
`numpy.ndarray` are references only), `bytes`/`bytearray`/containers refuse integer sizes, numpy arrays are created
empty and filled from the pickle's own bytes, tensor rebuilds may not attach hooks or set arbitrary attributes, the
zip records are checked against the file size (all stored, uncompressed), and every storage's
`numel x element size` is checked against the bytes that hold it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import datetime
import pathlib
import pickle
import struct
import tarfile
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
                  "bytearray", "slice", "object")

# torch._utils functions that rebuild plain dense tensors from a storage the loader checked. The sparse, nested,
# quantized and wrapper-subclass rebuilds take a pickle-controlled size and allocate it, and no weights checkpoint
# vqforge reads uses them, so they are not allowed.
_TENSOR_REBUILD_FUNCTIONS = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage",
)

# names that a pickle may refer to (e.g. as the type argument of `_rebuild_from_type_v2` or numpy's `_reconstruct`)
# but never call: calling them with a pickle-chosen size allocates that size (`torch.Tensor(10**12)`)
_REFERENCE_ONLY = {"torch.Tensor", "torch.nn.parameter.Parameter", "numpy.ndarray", "typing.Any"}

# the most elements of a numpy array that numpy's `_reconstruct` may create (numpy pickles `(0,)` and then fills the
# array from the pickle's bytes in BUILD, whose length numpy checks)
_NUMPY_RECONSTRUCT_MAX = 1
_PLAIN = (list, tuple, dict, set, frozenset, str, bytes, bytearray, int, float, bool, complex, type(None))


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


def _refuse_size(source: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{source}: {what}, which would make the loader allocate memory the file does not hold; "
        "the file is damaged or crafted and was not loaded.\n"
        "  fix: use the original checkpoint file (re-download or copy it again), or re-save its weights with "
        "torch.save(ckpt['state_dict'], 'weights.pt') where it was written"
    )


def _all_plain(values: Any) -> bool:
    return all(isinstance(v, _PLAIN) for v in values)


def _obj_state_ok(state: Any) -> bool:
    """Whether `torch._utils._set_obj_state(tensor, state)` only adds new, public attributes to the tensor."""
    if state is None:
        return True
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, dict):
            return False
        for key in part:
            if not (isinstance(key, str) and key.isidentifier() and not key.startswith("_")
                    and not hasattr(torch.nn.Parameter, key)):
                return False
    return True


_REBUILD_HOOKS_AT = {"_rebuild_tensor_v2": 5, "_rebuild_tensor_v3": 5, "_rebuild_parameter": 2,
                     "_rebuild_parameter_with_state": 2}
_STORAGE_FIRST = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3")


def _call_problem(qualname: str, fn: Any, args: tuple, kwargs: dict) -> str | None:
    """Why calling an allowed `fn(*args, **kwargs)` from a pickle is refused, or None when it is bounded and inert."""
    name = qualname.rsplit(".", 1)[-1]
    if kwargs and not qualname.startswith("vqforge.safe_pickle."):
        return f"`{qualname}` with keyword arguments"
    if qualname.startswith("builtins."):
        if name in ("bytes", "bytearray") and args and isinstance(args[0], int):
            return f"`{name}({args[0]})` (an integer size)"
        if not _all_plain(args):
            return f"`{qualname}` on a {type(next(a for a in args if not isinstance(a, _PLAIN))).__name__}"
        return None
    if qualname == "collections.defaultdict":
        return None if _all_plain(args[1:]) else f"`{qualname}` with non-plain arguments"
    if qualname in ("collections.OrderedDict", "collections.Counter", "torch.Size", "torch.device",
                    "torch.serialization._get_layout", "numpy.dtype") or qualname.startswith(("pathlib.", "datetime.")):
        return None if _all_plain(args) else f"`{qualname}` with non-plain arguments"
    if qualname == "_codecs.encode":
        ok = (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str)
              and args[1].replace("-", "").replace("_", "").lower() in ("latin1", "iso88591"))
        return None if ok else "`_codecs.encode` with arguments other than (text, 'latin1')"
    if qualname.endswith("multiarray._reconstruct"):
        shape = args[1] if len(args) > 1 else None
        try:
            count = 1
            for n in (shape if isinstance(shape, tuple) else (shape,)):
                count *= int(n)
        except (TypeError, ValueError):
            return f"`{qualname}` with shape {shape!r}"
        return None if 0 <= count <= _NUMPY_RECONSTRUCT_MAX else f"a numpy array of shape {shape!r} made before its data"
    if qualname.endswith("multiarray.scalar"):
        dtype = args[0] if args else None
        if not isinstance(getattr(dtype, "itemsize", None), int):
            return f"`{qualname}` without a dtype"
        data = args[1] if len(args) > 1 else b""
        limit = max(len(data) if isinstance(data, (bytes, str)) else 0, 64)
        return None if dtype.itemsize <= limit else f"a numpy scalar of {dtype.itemsize} bytes"
    if qualname == "torch._tensor._rebuild_from_type_v2":
        if len(args) != 4:
            return f"`{qualname}` with {len(args)} arguments"
        func, new_type, inner, state = args
        allowed_funcs = {_ALLOWED.get(f"torch._utils.{n}") for n in _REBUILD_HOOKS_AT} - {None}
        if func not in allowed_funcs:
            return f"`{qualname}` rebuilding with {getattr(func, '__qualname__', type(func).__name__)}"
        if new_type not in (torch.Tensor, torch.nn.Parameter):
            return f"`{qualname}` making a {getattr(new_type, '__qualname__', type(new_type).__name__)}"
        if not _obj_state_ok(state):
            return f"`{qualname}` setting attributes {state!r}"
        if not isinstance(inner, tuple):
            return f"`{qualname}` with arguments that are not a tuple"
        return _call_problem(f"torch._utils.{func.__name__}", func, inner, {})
    if qualname.startswith("torch._utils."):
        if name in _STORAGE_FIRST and not (args and isinstance(args[0], (torch.storage.TypedStorage,
                                                                           torch.UntypedStorage))):
            return f"`{qualname}` on something that is not a stored tensor"
        at = _REBUILD_HOOKS_AT.get(name)
        if at is not None and len(args) > at and args[at]:
            return f"`{qualname}` attaching backward hooks"
        if name == "_rebuild_parameter_with_state" and len(args) > 3 and not _obj_state_ok(args[3]):
            return f"`{qualname}` setting attributes {args[3]!r}"
        return None
    return None


class _RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with an allow-list for globals, checked calls, checked storages and a guarded BUILD."""

    source = "<checkpoint>"
    file_size = 0
    records: dict[str, int] | None = None  # zip file: storage key -> record size in bytes; None: not a zip file
    dispatch = dict(pickle._Unpickler.dispatch)
    _torch_persistent_load = None

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

    # -- every way a pickle calls something: REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST --
    def _check_call(self, fn: Any, args: tuple, kwargs: dict | None = None) -> None:
        if isinstance(fn, type) and issubclass(fn, InertObject):
            return
        qualname = _qualname_of(fn)
        if qualname is None:
            raise _refuse(self.source, f"a call of {getattr(fn, '__qualname__', type(fn).__name__)}")
        if qualname in _REFERENCE_ONLY:
            raise _refuse_size(self.source, f"it calls `{qualname}`, which may only be referred to")
        problem = _call_problem(qualname, fn, tuple(args), kwargs or {})
        if problem is not None:
            raise _refuse_size(self.source, f"it calls {problem}")

    def _load_reduce(self) -> None:
        args = self.stack[-1]
        self._check_call(self.stack[-2], args if isinstance(args, tuple) else ())
        pickle._Unpickler.load_reduce(self)

    def _load_newobj(self) -> None:
        self._check_call(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj(self)

    def _load_newobj_ex(self) -> None:
        self._check_call(self.stack[-3], self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj_ex(self)

    def _instantiate(self, klass: Any, args: list) -> None:  # OBJ and INST
        self._check_call(klass, tuple(args))
        pickle._Unpickler._instantiate(self, klass, args)

    def _load_build(self) -> None:
        inst = self.stack[-2]  # stack: [..., inst, state]
        if not _build_target_ok(inst):
            raise _refuse(self.source, f"state of {type(inst).__module__}.{type(inst).__qualname__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build

    # torch.load sets `unpickler.persistent_load`; the property keeps torch's function and checks each storage's size
    # against the bytes that hold it before torch allocates it
    @property
    def persistent_load(self):  # type: ignore[override]
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, fn) -> None:
        self._torch_persistent_load = fn

    def _checked_persistent_load(self, saved_id: Any) -> Any:
        if self._torch_persistent_load is None:
            raise pickle.UnpicklingError("persistent id in a pickle without storages")
        if isinstance(saved_id, tuple) and len(saved_id) >= 5:
            typename = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
            if typename == "storage":
                storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
                dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
                if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
                    raise _refuse_size(self.source, f"storage {key!r} has no valid type or size")
                nbytes = numel * torch._utils._element_size(dtype)
                if self.records is not None:
                    have = self.records.get(str(key))
                    if have is None:
                        raise _refuse_size(self.source, f"storage {key!r} has no data record")
                    if nbytes > have:
                        raise _refuse_size(self.source, f"storage {key!r} claims {numel} x {dtype} = {nbytes} bytes but "
                                                        f"its record holds {have}")
                elif nbytes > self.file_size:
                    raise _refuse_size(self.source, f"storage {key!r} claims {nbytes} bytes, more than the whole file "
                                                    f"({self.file_size})")
        return self._torch_persistent_load(saved_id)


_QUALNAMES: dict[int, str] = {}


def _qualname_of(fn: Any) -> str | None:
    """The allow-list name of an allowed object (by identity), or None."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed_globals()
    if not _QUALNAMES:
        for qualname, obj in _ALLOWED.items():
            _QUALNAMES.setdefault(id(obj), qualname)
    return _QUALNAMES.get(id(fn))


def _zip_records(fileobj: Any, size: int, source: str) -> dict[str, int] | None:
    """Check a torch zip checkpoint's directory against the file before anything is read: every record stored
    uncompressed and inside the file. Returns storage key -> record size, or None for a non-zip file."""
    fileobj.seek(0)
    if not zipfile.is_zipfile(fileobj):
        fileobj.seek(0)
        return None
    fileobj.seek(0)
    records: dict[str, int] = {}
    total = 0
    with zipfile.ZipFile(fileobj) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise _refuse_size(source, f"zip record {info.filename!r} is compressed "
                                           f"({info.compress_size} -> {info.file_size} bytes)")
            total += info.file_size
            if info.header_offset + info.file_size > size or total > size:
                raise _refuse_size(source, f"zip record {info.filename!r} claims {info.file_size} bytes past the end "
                                           f"of the {size}-byte file")
            _, _, inner = info.filename.partition("/")
            if inner.startswith("data/"):
                records[inner[len("data/"):]] = info.file_size
    fileobj.seek(0)
    return records


def _pickle_module(source: str, file_size: int, records: dict[str, int] | None) -> types.ModuleType:
    """A module object that torch.load accepts as `pickle_module` (needs `Unpickler` and `load`)."""
    mod = types.ModuleType("vqforge_safe_pickle")

    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.source = source
    Unpickler.file_size = file_size
    Unpickler.records = records

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    return mod


_READ_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError,
                TypeError, AttributeError, KeyError, IndexError, UnicodeDecodeError, AssertionError, OverflowError,
                MemoryError, OSError, struct.error)


def _load(fileobj: Any, size: int, source: str, map_location: str | torch.device) -> Any:
    try:
        records = _zip_records(fileobj, size, source)
        if records is None and tarfile.is_tarfile(fileobj):
            raise CheckpointError(
                f"{source}: is a tar archive (the pre-2017 torch.save format), whose storages declare their own sizes; "
                "vqforge does not read it\n  fix: load it once with an old PyTorch you trust and re-save it with "
                "torch.save, or convert it to safetensors")
        fileobj.seek(0)
        return torch.load(fileobj, map_location=map_location, pickle_module=_pickle_module(source, size, records),
                          weights_only=False)
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{source}: cannot read it as a PyTorch checkpoint ({type(e).__name__}: {e})\n"
            "  fix: pass a file written by torch.save or PyTorch Lightning (.ckpt/.pt/.pth); for safetensors files "
            "use the .safetensors path"
        ) from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a `torch.save` / Lightning `.ckpt` file with the restricted unpickler. Returns the pickled object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file\n  fix: check the path to the checkpoint")
    with open(path, "rb") as f:
        return _load(f, path.stat().st_size, str(path), map_location)


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


__all__ = ["InertObject", "load_checkpoint", "extract_state_dict", "load_state_dict_file"]
