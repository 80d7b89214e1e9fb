"""The signature catalogue: checked against the real headers of both installed runtime wheels.

Three independent checks of the runtime + driver parts, in every run:

1. the committed JSON equals a fresh parse of the installed CUDA 12 and 13 runtime wheels' headers
   (stale or hand-edited data fails);
2. a plain regex scan of the raw headers (no preprocessor, no C parser) finds every API the headers
   declare, and the catalogue has each one, with the same argument names;
3. gcc compiles the catalogue's facts against the real headers (and the real libc headers): every
   declaration redeclared as the catalogue writes it (a wrong type is a "conflicting types" error), and
   static assertions for every type's size, alignment, kind, signedness and field offsets, every enum
   value and every integer constant.

Then facts checked by hand, and the extra part (cuBLAS/NCCL/cuDNN, generated on demand) for coherence.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import skip_or_fail

from ingero.catalogue import (
    Catalogue,
    CatalogueError,
    CType,
    Param,
    Signature,
    load_catalogue,
)
from ingero.catalogue import build as B
from ingero.catalogue import cparse as C
from ingero.errors import IngeroError, NotFound, SymbolNotFound

DATA = Path(__file__).resolve().parents[1] / "ingero" / "catalogue" / "data"
MAJORS = sorted(B.RUNTIME_WHEELS)


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_catalogue()


def _committed(part: str, major: int) -> dict:
    return json.loads((DATA / f"{part}-{major}.json").read_text())


def _need_gcc() -> None:
    if shutil.which("gcc") is None:
        skip_or_fail("gcc is not installed (the catalogue checks preprocess and compile the headers)")


@pytest.fixture(scope="module", params=MAJORS, ids=lambda m: f"cuda{m}")
def runtime(request) -> tuple[int, Path, dict]:
    """(major, include dir, committed runtime part) of one installed runtime wheel."""
    major = request.param
    try:
        inc, _, _ = B.runtime_include_dir(major)
    except IngeroError as err:
        pytest.fail(f"the runtime wheel for CUDA {major} is a test dependency: {err}")
    return major, inc, _committed("runtime", major)


# ---------------------------------------------------------------------------------------------------
# 1. the committed data is what the installed headers say


def test_committed_runtime_part_matches_a_fresh_parse(runtime):
    _need_gcc()
    major, _, committed = runtime
    fresh = B.build_part(B.runtime_spec(major))
    installed = {w["name"]: w["version"] for w in fresh["sources"]["wheels"]}
    recorded = {w["name"]: w["version"] for w in committed["sources"]["wheels"]}
    assert installed == recorded, f"regenerate with `make catalogue`: wheels {installed} != {recorded}"
    for key in ("headers",):
        assert fresh["sources"][key] == committed["sources"][key], "header hashes differ: `make catalogue`"
    for key in ("functions", "variants", "aliases", "legacy", "types", "enums", "constants"):
        f, c = fresh[key], committed[key]
        missing = sorted(set(f) - set(c))
        extra = sorted(set(c) - set(f))
        changed = sorted(k for k in set(f) & set(c) if f[k] != c[k])
        assert not (missing or extra or changed), (
            f"CUDA {major} {key}: not in the catalogue {missing[:5]}, not in the headers {extra[:5]}, "
            f"different {[(k, f[k], c[k]) for k in changed[:3]]}"
        )


def test_counts_per_family(cat):
    for major in MAJORS:
        assert len([n for n in cat.names("cudart", major) if not n.endswith(("_ptds", "_ptsz"))]) >= 300
        assert len([n for n in cat.names("cuda", major) if not n.endswith(("_ptds", "_ptsz"))]) >= 400
    # the areas the brief names are all there
    for name in [
        "cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaMemcpy", "cudaMemcpyAsync", "cudaMemset",
        "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaStreamCreate", "cudaStreamSynchronize",
        "cudaEventRecord", "cudaEventSynchronize", "cudaGraphLaunch", "cudaStreamBeginCapture",
        "cudaDeviceSynchronize", "cuMemAlloc", "cuMemcpyHtoD", "cuLaunchKernel", "cuStreamSynchronize",
        "cuCtxSynchronize", "cuGraphLaunch", "cuEventRecord",
    ]:  # fmt: skip
        for major in MAJORS:
            assert cat.lookup(name, cuda_major=major) is not None, (name, major)


# ---------------------------------------------------------------------------------------------------
# 2. a regex scan of the raw headers, independent of the C parser

_DECL = re.compile(r"\b(CUDARTAPI|CUDAAPI)\s+(\w+)\s*\(")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _raw_declarations(path: Path) -> dict[str, list[list[str]]]:
    """name -> every parameter-name list the header text gives it (all #if branches)."""
    text = _strip_comments(path.read_text())
    out: dict[str, list[list[str]]] = {}
    for m in _DECL.finditer(text):
        name = m.group(2)
        i, depth = m.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params = text[m.end() : i - 1]
        params = re.sub(r"__dv\([^)]*\)", "", params)
        names: list[str] = []
        parts, depth, cur = [], 0, ""
        for ch in params:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += {"(": 1, ")": -1}.get(ch, 0)
            cur += ch
        parts.append(cur)
        for p in parts:
            p = p.strip()
            if not p or p == "void":
                continue
            fp = re.search(r"\(\s*\w*\s*\*\s*(\w+)\s*\)", p)  # a function pointer parameter
            ident = fp.group(1) if fp else re.findall(r"\w+", re.sub(r"\[[^\]]*\]", "", p))[-1]
            names.append(ident)
        out.setdefault(name, []).append(names)
    return out


@pytest.mark.parametrize("header,family", [("cuda_runtime_api.h", "cudart"), ("cuda.h", "cuda")])
def test_every_declared_api_is_in_the_catalogue_with_its_argument_names(runtime, cat, header, family):
    major, inc, _ = runtime
    raw = _raw_declarations(inc / header)
    assert len(raw) >= (40 if family == "cudart" else 30)
    problems = []
    for name, variants in raw.items():
        sig = cat.lookup(name, cuda_major=major)
        legacy = cat.lookup_symbol(name, cuda_major=major)
        if sig is None and legacy is None:
            problems.append(f"{name}: not in the catalogue")
            continue
        have = {tuple(p.name for p in s.params) for s in (sig, legacy) if s is not None}
        if not have & {tuple(v) for v in variants}:
            problems.append(f"{name}: catalogue args {sorted(have)} vs header {variants}")
        if sig is not None:
            assert sig.library == family, name
    assert not problems, "\n".join(problems[:20])


def test_simple_alias_macros_are_aliases(runtime, cat):
    """``#define cuMemAlloc cuMemAlloc_v2`` lines, found by regex in the raw cuda.h."""
    major, inc, committed = runtime
    text = _strip_comments((inc / "cuda.h").read_text())
    found = dict(re.findall(r"^\s*#define\s+(cu\w+)\s+(cu\w+_v\d+)\s*$", text, flags=re.M))
    assert len(found) >= 20
    for macro, target in found.items():
        if macro == target:
            continue
        assert committed["aliases"].get(macro) == target, macro
        assert cat.called_names(macro, cuda_major=major)[0] == target


# ---------------------------------------------------------------------------------------------------
# 3. gcc checks every fact against the real headers and the real libc headers

# gcc's __builtin_classify_type in C: integers, enums and _Bool are all integer_type_class (1)
_CLASS = {"int": 1, "uint": 1, "enum": 1, "bool": 1, "pointer": 5, "char_pointer": 5, "float": 8,
          "double": 8, "long_double": 8, "struct": 12, "union": 13}  # fmt: skip


def _reachable(part: dict, roots: dict) -> set[str]:
    """The type keys the signatures in ``roots`` use, and what those use."""
    todo = [r["ret"] for r in roots.values()]
    todo += [p[-1] for r in roots.values() for p in r["params"]]
    seen: set[str] = set()
    while todo:
        k = todo.pop()
        if k in seen or k not in part["types"]:
            continue
        seen.add(k)
        rec = part["types"][k]
        todo += [rec[x] for x in ("td", "uq", "p", "el") if x in rec]
        todo += [f[1] for f in rec.get("f", ())]
    return seen


def _type_asserts(part: dict, keys: set[str]) -> list[str]:
    out = []
    for i, (name, rec) in enumerate(part["types"].items()):
        if name not in keys or "<anonymous" in name or rec["k"] in ("function", "void") or rec["s"] is None:
            continue
        t = f"__typeof__({name})"
        msg = f'"{name}"'
        out.append(f"_Static_assert(sizeof({t}) == {rec['s']}, {msg});")
        out.append(f"_Static_assert(_Alignof({t}) == {rec['a']}, {msg});")
        if rec["k"] in _CLASS:
            out.append(f"extern {t} ingero_v{i};")
            out.append(f"_Static_assert(__builtin_classify_type(ingero_v{i}) == {_CLASS[rec['k']]}, {msg});")
        if rec["k"] in ("int", "uint"):
            sign = "<" if rec["k"] == "int" else ">"
            out.append(f"_Static_assert((({t})-1) {sign} 0, {msg});")
        for f in rec.get("f", ()):
            if f[0] and len(f) == 3:
                out.append(f"_Static_assert(__builtin_offsetof({t}, {f[0]}) == {f[2]}, {msg});")
    return out


def _compile(source: str, inc: Path, defines: tuple[str, ...] = ()) -> None:
    """gcc -fsyntax-only with the real system headers; only crt/host_defines.h is a stand-in (the
    runtime wheels do not ship it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        crt = Path(tmp) / "crt"
        crt.mkdir()
        (crt / "host_defines.h").write_text(C.SHIMS["crt/host_defines.h"])
        (crt / "host_config.h").write_text("")
        src = Path(tmp) / "check.c"
        src.write_text(source)
        cmd = ["gcc", "-fsyntax-only", "-std=gnu11", "-w", f"-I{tmp}", f"-I{inc}"]
        cmd += [f"-D{d}" for d in defines] + [str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
        assert proc.returncode == 0, f"{len(errors)} errors, first: " + "\n".join(errors[:15])


def _decl(name: str, rec: dict) -> str:
    from ingero.catalogue import _declarator

    ps = ", ".join(_declarator(p[1], p[0]) for p in rec["params"]) or "void"
    if rec.get("variadic"):
        ps += ", ..."
    return f"{rec['ret']} {name}({ps});"


def test_gcc_agrees_with_every_declaration_type_and_value(runtime):
    _need_gcc()
    major, inc, part = runtime
    head = '#include "cuda_runtime_api.h"\n#include "library_types.h"\n#include "cuda.h"\n'
    body = [_decl(n, r) for n, r in part["functions"].items()]
    current = _reachable(part, part["functions"])
    body += _type_asserts(part, current)
    for en in part["enums"].values():
        body += [f'_Static_assert({k} == {v}, "{k}");' for k, v in en["values"].items()]
    for k, v in part["constants"].items():
        body.append(f'_Static_assert((long long)({k}) == {v}LL, "{k}");')
    assert len(body) > 5000
    _compile(head + "\n".join(body) + "\n", inc)
    # the per-thread variants have their base's signature
    pt = [_decl(v, part["functions"][b]) for v, b in part["variants"].items() if b in part["functions"]]
    _compile(head + "\n".join(pt) + "\n", inc, ("CUDA_API_PER_THREAD_DEFAULT_STREAM",))
    # the legacy entry points as the headers still declare them for the libraries' own build
    lg = [_decl(n, r) for n, r in part["legacy"].items()]
    lg += _type_asserts(part, set(part["types"]) - current)  # the types only legacy entry points use
    lg += [_decl(v, part["legacy"][b]) for v, b in part["variants"].items() if b in part["legacy"]]
    _compile(head + "\n".join(lg) + "\n", inc, ("__CUDA_API_VERSION_INTERNAL",))


def test_gcc_rejects_a_wrong_fact(runtime):
    """The compile check can fail: one wrong type, one wrong offset, one wrong value."""
    _need_gcc()
    major, inc, part = runtime
    head = '#include "cuda_runtime_api.h"\n#include "cuda.h"\n'
    bad_decl = (
        "cudaError_t cudaMemcpyAsync(void *dst, const void *src, int count, enum cudaMemcpyKind kind, "
        "cudaStream_t stream);"
    )
    for wrong in (
        bad_decl,
        '_Static_assert(__builtin_offsetof(dim3, z) == 4, "z");',
        '_Static_assert(cudaMemcpyDeviceToHost == 3, "k");',
    ):
        with pytest.raises(AssertionError, match="errors"):
            _compile(head + wrong + "\n", inc)


# ---------------------------------------------------------------------------------------------------
# facts by hand


@pytest.mark.parametrize("major", MAJORS)
def test_cuda_launch_kernel(cat, major):
    sig = cat.lookup("cudaLaunchKernel", cuda_major=major)
    assert isinstance(sig, Signature)
    assert [p.name for p in sig.params] == ["func", "gridDim", "blockDim", "args", "sharedMem", "stream"]
    assert [p.type for p in sig.params] == ["const void *", "dim3", "dim3", "void **", "size_t", "cudaStream_t"]
    grid = sig.params[1].ctype
    assert (grid.kind, grid.size, grid.align) == ("struct", 12, 4)
    assert [(f.name, f.ctype.kind, f.ctype.size, f.offset) for f in grid.fields] == [
        ("x", "uint", 4, 0),
        ("y", "uint", 4, 4),
        ("z", "uint", 4, 8),
    ]
    name, ctype, offset = grid.fields[2]  # fields unpack as (name, ctype, offset)
    assert (name, offset) == ("z", 8)
    assert sig.params[5].ctype.kind == "pointer" and sig.params[4].ctype.kind == "uint"
    assert sig.params[0].ctype.kind == "pointer" and sig.return_ctype.kind == "enum"
    assert sig.library == "cudart" and sig.header == "cuda_runtime_api.h" and sig.cuda_major == major
    assert sig.declaration() == (
        "cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim, dim3 blockDim, void **args, "
        "size_t sharedMem, cudaStream_t stream)"
    )
    assert cat.type_info("dim3", cuda_major=major) == grid


def test_memcpy_async_and_its_variants(cat):
    sig = cat.lookup("cudaMemcpyAsync", cuda_major=12)
    assert sig.declaration() == (
        "cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, "
        "cudaStream_t stream)"
    )
    assert isinstance(sig.params[2], Param) and sig.param("count").ctype.kind == "uint"
    kind = sig.param("kind").ctype
    assert (kind.kind, kind.enum, kind.size) == ("enum", "cudaMemcpyKind", 4)
    pt = cat.lookup("cudaMemcpyAsync_ptsz")
    assert (pt.name, pt.base, pt.called_as) == ("cudaMemcpyAsync_ptsz", "cudaMemcpyAsync", "cudaMemcpyAsync_ptsz")
    assert pt.params == cat.lookup("cudaMemcpyAsync").params
    assert cat.lookup("cudaMemcpy_ptds").base == "cudaMemcpy"
    assert cat.lookup("cuMemcpyAsync_ptsz").base == "cuMemcpyAsync"
    assert cat.called_names("cudaMemcpy") == ["cudaMemcpy", "cudaMemcpy_ptds"]
    assert cat.called_names("cudaMemcpyAsync") == ["cudaMemcpyAsync", "cudaMemcpyAsync_ptsz"]
    assert cat.called_names("cuMemcpyHtoD") == ["cuMemcpyHtoD_v2", "cuMemcpyHtoD_v2_ptds"]
    assert cat.called_names("nope") == []
    with pytest.raises(CatalogueError, match="did you mean 'count'"):
        sig.param("cout")


def test_aliases_and_legacy_symbols(cat):
    sig = cat.lookup("cuMemAlloc")
    assert (sig.name, sig.base, sig.called_as) == ("cuMemAlloc", "cuMemAlloc_v2", "cuMemAlloc_v2")
    assert [(p.name, p.type) for p in sig.params] == [("dptr", "CUdeviceptr *"), ("bytesize", "size_t")]
    assert sig.declaration() == "CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)"
    assert cat.called_names("cuMemAlloc") == ["cuMemAlloc_v2"]
    # the exported symbol named cuMemAlloc is the old entry point, with a 32-bit size
    old = cat.lookup_symbol("cuMemAlloc")
    assert old.legacy and [p.type for p in old.params] == ["CUdeviceptr_v1 *", "unsigned int"]
    assert cat.lookup_symbol("cuMemAlloc_v2") == cat.lookup("cuMemAlloc_v2")
    assert cat.lookup_symbol("cuMemAlloc_v2").legacy is False
    assert cat.lookup("cudaGetDeviceProperties", cuda_major=12).called_as == "cudaGetDeviceProperties_v2"
    assert "cuMemAlloc" in cat.aliases() and "cuMemAlloc" in cat.legacy_names()


def test_enums(cat):
    assert cat.enum("cudaMemcpyKind") == {
        "cudaMemcpyHostToHost": 0,
        "cudaMemcpyHostToDevice": 1,
        "cudaMemcpyDeviceToHost": 2,
        "cudaMemcpyDeviceToDevice": 3,
        "cudaMemcpyDefault": 4,
    }
    for major in MAJORS:
        assert cat.enum("cudaError_t", cuda_major=major)["cudaErrorInsufficientDriver"] == 35
        assert cat.enum("cudaError", cuda_major=major)["cudaErrorInsufficientDriver"] == 35
        assert cat.enum("CUresult", cuda_major=major)["CUDA_ERROR_NO_DEVICE"] == 100
    assert cat.enum_value("cudaMemcpyDeviceToHost") == ("cudaMemcpyKind", 2)
    assert cat.enum_value("cudaErrorInsufficientDriver") == ("cudaError", 35)
    assert cat.enum("enum cudaStreamCaptureMode")["cudaStreamCaptureModeRelaxed"] == 2
    assert cat.enum("cudaDataType")["CUDA_R_32F"] == 0 and cat.enum("cudaDataType_t")["CUDA_R_16F"] == 2
    assert cat.constant("cudaStreamNonBlocking") == 1
    assert cat.constant("CUDART_VERSION", cuda_major=12) // 1000 == 12


def test_enum_value_errors_say_did_you_mean(cat):
    with pytest.raises(NotFound) as exc:
        cat.enum_value("cudaMemcpyDeviceToHst")
    assert isinstance(exc.value, IngeroError)
    assert "cudaMemcpyDeviceToHost" in str(exc.value) and "did you mean" in str(exc.value)
    with pytest.raises(CatalogueError, match="did you mean 'cudaMemcpyKind'"):
        cat.enum("cudaMemcpyKnd")
    with pytest.raises(CatalogueError, match="no type"):
        cat.type_info("cudaStrem_t")
    with pytest.raises(SymbolNotFound, match="did you mean 'cudaMemcpyAsync'"):
        cat.require("cudaMemcpyAsyn")
    with pytest.raises(CatalogueError, match="has no CUDA 11"):
        cat.lookup("cudaMalloc", cuda_major=11)
    assert cat.lookup("cudaNoSuchThing") is None


def test_type_info(cat):
    s = cat.type_info("cudaStream_t", cuda_major=12)
    assert isinstance(s, CType) and (s.kind, s.size, s.pointee) == ("pointer", 8, "struct CUstream_st")
    assert cat.type_info("const char *").kind == "char_pointer"
    assert cat.type_info("size_t") == CType("size_t", "uint", 8, 8, typedef_of="unsigned long")
    assert cat.type_info("CUdeviceptr").kind == "uint"
    ext = cat.type_info("struct cudaExtent")
    assert (ext.size, [f.name for f in ext.fields]) == (24, ["width", "height", "depth"])
    uuid = cat.type_info("CUuuid")
    assert (uuid.kind, uuid.size, uuid.align) == ("struct", 16, 1)
    assert uuid.fields[0].ctype.kind == "array" and uuid.fields[0].ctype.length == 16
    assert len(uuid.scalars()) == 16
    pitched = cat.type_info("struct cudaPitchedPtr")
    assert [(o, t.kind) for o, t in pitched.scalars()] == [(0, "pointer"), (8, "uint"), (16, "uint"), (24, "uint")]


def test_newest_major_wins_and_majors_differ(cat):
    assert cat.cuda_majors == (13, 12)
    assert cat.lookup("cudaMalloc").cuda_major == 13
    v12 = cat.lookup("cudaStreamGetCaptureInfo", cuda_major=12)
    v13 = cat.lookup("cudaStreamGetCaptureInfo", cuda_major=13)
    assert v12.called_as == "cudaStreamGetCaptureInfo_v2" and len(v12.params) == 6
    assert v13.called_as == "cudaStreamGetCaptureInfo" and len(v13.params) == 7


def test_sources_record_wheels_and_header_hashes(cat):
    runtime = {s.cuda_major: s for s in cat.sources if s.part == "runtime"}
    assert runtime[12].wheels[0][0] == "nvidia-cuda-runtime-cu12"
    assert runtime[13].wheels[0][0] == "nvidia-cuda-runtime"
    for s in cat.sources:
        assert s.wheels and s.headers
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in s.headers.values())


# ---------------------------------------------------------------------------------------------------
# the extra part: generated on demand (make catalogue-extra), committed


@pytest.mark.parametrize("major", MAJORS)
def test_extra_part_is_present_and_coherent(cat, major):
    part = _committed("extra", major)
    wheels = {w["name"] for w in part["sources"]["wheels"]}
    assert any(w.startswith("nvidia-cublas") for w in wheels)
    assert {f"nvidia-nccl-cu{major}", f"nvidia-cudnn-cu{major}"} <= wheels
    for h in ("cublas_api.h", "cublasLt.h", "nccl.h", "cudnn_ops.h", "cudnn_cnn.h", "cudnn_graph.h"):
        assert re.fullmatch(r"[0-9a-f]{64}", part["sources"]["headers"][h]["sha256"])
        assert part["sources"]["headers"][h]["wheel"] in wheels
    for name, rec in {**part["functions"], **part["legacy"]}.items():
        for p in rec["params"]:
            assert (p[2] if len(p) > 2 else p[1]) in part["types"], (name, p)
        assert rec["ret"] in part["types"], name
    for fam in ("cublas", "cublasLt", "nccl", "cudnn"):
        assert len(cat.names(fam, major)) >= 20, fam


def test_gemm_family(cat):
    sig = cat.lookup("cublasSgemm")
    assert sig.called_as == "cublasSgemm_v2" and sig.library == "cublas"
    assert [p.name for p in sig.params] == [
        "handle", "transa", "transb", "m", "n", "k", "alpha", "A", "lda", "B", "ldb", "beta", "C", "ldc",
    ]  # fmt: skip
    assert sig.param("transa").ctype.kind == "enum" and sig.param("alpha").type == "const float *"
    assert cat.lookup_symbol("cublasSgemm").legacy  # the v1 API without a handle is still exported
    ex = cat.lookup("cublasGemmEx")
    assert [p.name for p in ex.params][-3:] == ["ldc", "computeType", "algo"]
    assert cat.lookup("cublasGemmStridedBatchedEx") is not None
    assert cat.lookup("cublasSgemmStridedBatched").param("strideA").type == "long long int"
    assert cat.lookup("cublasGemmBatchedEx").param("Aarray").ctype.kind == "pointer"
    lt = cat.lookup("cublasLtMatmul")
    assert lt.library == "cublasLt" and lt.params[-1].name == "stream"
    assert cat.enum("cublasOperation_t")["CUBLAS_OP_T"] == 1


def test_nccl_collectives(cat):
    ar = cat.lookup("ncclAllReduce")
    assert ar.declaration() == (
        "ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, "
        "ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)"
    )
    for name in ("ncclBroadcast", "ncclReduceScatter", "ncclAllGather", "ncclSend", "ncclRecv",
                 "ncclGroupStart", "ncclGroupEnd", "ncclCommInitRank", "pncclAllReduce"):  # fmt: skip
        assert cat.lookup(name).library == "nccl", name
    assert [p.name for p in cat.lookup("ncclSend").params] == [
        "sendbuff",
        "count",
        "datatype",
        "peer",
        "comm",
        "stream",
    ]
    assert cat.enum("ncclDataType_t")["ncclFloat32"] == 7 and cat.enum_value("ncclSum") == ("ncclRedOp_t", 0)
    uid = cat.lookup("ncclCommInitRank").param("commId").ctype
    assert (uid.kind, uid.size) == ("struct", 128)  # passed by value, in memory


def test_cudnn_calls(cat):
    for name in ("cudnnConvolutionForward", "cudnnConvolutionBackwardData", "cudnnConvolutionBackwardFilter",
                 "cudnnCreate", "cudnnSetStream", "cudnnBackendExecute"):  # fmt: skip
        assert cat.lookup(name).library == "cudnn", name
    assert [p.name for p in cat.lookup("cudnnSetStream").params] == ["handle", "streamId"]
    assert cat.lookup("cudnnConvolutionForward").param("algo").ctype.kind == "enum"


def test_load_is_cached_and_lazy(tmp_path):
    assert load_catalogue() is load_catalogue()
    (tmp_path / "runtime-12.json").write_text((DATA / "runtime-12.json").read_text())
    c = load_catalogue(tmp_path)
    assert c.cuda_majors == (12,) and c.lookup("cudaMalloc").cuda_major == 12
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CatalogueError, match="PART-MAJOR"):
        load_catalogue(tmp_path / ".." / tmp_path.name)


def test_every_runtime_entry_is_exported_by_the_wheels_libcudart(runtime, cat):
    """Every cudart name the catalogue has (functions, per-thread variants, legacy entry points) is a
    real exported symbol of the wheel's libcudart.so.MAJOR."""
    from elftools.elf.elffile import ELFFile

    major, inc, part = runtime
    lib = inc.parent / "lib" / f"libcudart.so.{major}"
    with lib.open("rb") as fh:
        dynsym = ELFFile(fh).get_section_by_name(".dynsym")
        exported = {s.name for s in dynsym.iter_symbols() if s.entry["st_shndx"] != "SHN_UNDEF"}
    names = [n for n, r in {**part["functions"], **part["legacy"]}.items() if r["lib"] == "cudart"]
    names += [v for v, b in part["variants"].items() if b.startswith("cuda")]
    assert len(names) > 300
    missing = sorted(set(names) - exported)
    assert not missing, missing[:20]
