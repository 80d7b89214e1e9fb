"""Emit BPF C from a resolved spec.

Only this module writes C, and it writes only what it makes up: identifiers (``p0_vals``, ``v3``),
register names from a fixed table, and integers it formats itself. String constants of ``where`` are
emitted as byte lists. The spec's own text never reaches the compiler's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ingero.abi import INT_REGS
from ingero.compiler.record import EVENT_HEADER, STR_NULL, Layout, LayoutField, stats_enum
from ingero.dsl.resolved import (
    COMM_LEN,
    STR_CAP,
    Const,
    RAnd,
    RArith,
    RCompare,
    ResolvedProbe,
    ResolvedSpec,
    RExpr,
    RNot,
    ROr,
    RSymbolIn,
    StrConst,
    Value,
    ValueRef,
)
from ingero.errors import InternalError
from ingero.paths import data_dir

HEADER_KEYS = {f.key for f in EVENT_HEADER.fields if f.key}
_REGS = frozenset(INT_REGS)
_CMP = frozenset({"==", "!=", "<", "<=", ">", ">="})
#: Every aggregation the compiler emits code for (the checker accepts exactly these: tests/test_compiler.py).
AGGS = ("count", "sum", "avg", "min", "max", "hist", "lhist")


def _require(ok: bool, what: str) -> None:
    """A guard on what the checker promised; a real check (``python -O`` keeps it), not an ``assert``."""
    if not ok:
        raise InternalError(f"the compiler was given a probe it cannot compile: {what}")


@dataclass(frozen=True)
class CompiledProbe:
    probe: ResolvedProbe
    program: str  # the BPF program to load: pN_entry, or pN_session (entry and return) when session
    session: bool  # attach as a uprobe session link (the probe needs return values or latency)
    event: Layout | None  # payload after the header; None if the probe records nothing
    agg_key: Layout | None
    agg_val: Layout | None
    stats_map: str
    aggs_map: str | None

    @property
    def index(self) -> int:
        return self.probe.index


@dataclass(frozen=True)
class CompiledSpec:
    spec: ResolvedSpec
    c_text: str
    probes: tuple[CompiledProbe, ...]
    has_stacks: bool
    ringbuf_pages: int = 256  # per recording probe
    has_python: bool = False  # captures Python stacks (bpf/ingero_py.h; `stack` or `pystack`)
    python_extern: bool = False  # shares the process table of a live trace's standard probe set

    @property
    def cflags(self) -> list[str]:
        return [f"-I{data_dir('bpf')}"]


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("probe_templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _int_type(size: int, signed: bool) -> str:
    return {1: "8", 2: "16", 4: "32", 8: "64"}.get(size, "64").join(("s" if signed else "u", ""))


class _ProbeEmitter:
    def __init__(self, p: ResolvedProbe) -> None:
        self.p = p
        self.i = p.index
        self.slot: dict[str, str] = {}  # value key -> stash member
        scal: list[LayoutField] = [
            LayoutField("pid_tgid", "u64"),
            LayoutField("cookie", "u64"),
            LayoutField("ts", "u64"),
        ]
        arrs: list[LayoutField] = []
        self.entry_lines: list[str] = []
        self.return_lines: list[str] = []
        n = 0
        for v in p.values:
            if v.source == "arg":
                if v.kind == "string":
                    name = f"s{n}"
                    arrs.append(LayoutField(name, "char", STR_CAP, v.key))
                    scal.append(LayoutField(f"{name}_len", "s64", 0, v.key, "len"))
                    self.entry_lines += self._read_string(v, name)
                else:
                    name = f"v{n}"
                    scal.append(LayoutField(name, "s64" if v.signed else "u64", 0, v.key))
                    self.entry_lines += self._read_scalar(v, name)
                self.slot[v.key] = name
                n += 1
            elif v.source == "comm":
                arrs.append(LayoutField("comm", "char", COMM_LEN, "comm"))
                self.entry_lines.append("bpf_get_current_comm(v->comm, sizeof(v->comm));")
            elif v.source == "stack":
                scal.append(LayoutField("stack_id", "s64", 0, "stack"))
                self.entry_lines.append("v->stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);")
            elif v.source == "retval" and v.kind == "string":
                arrs.append(LayoutField("sret", "char", STR_CAP, "retval"))
                scal.append(LayoutField("sret_len", "s64", 0, "retval", "len"))
                self.return_lines += self._string_lines("(u64)PT_REGS_RC(ctx)", "sret")
        if any(v.source in ("stack", "pystack") for v in p.values):
            # the calling thread's Python stack (bpf/ingero_py.h), once for `stack` and `pystack`
            scal.append(LayoutField("stack_py", "u64", 0, "pystack"))
            self.entry_lines.append("v->stack_py = ingero_py_capture();")
        for v in p.values:  # reads through pointers, once every pointer has its slot
            if v.source == "deref" and v.deref is not None:
                name = f"d{n}"
                n += 1
                scal.append(LayoutField(name, "s64" if v.signed else "u64", 0, v.key))
                scal.append(LayoutField(f"{name}_len", "s64", 0, v.key, "len"))
                lines = self._read_through(v, name)
                (self.return_lines if v.deref.at_return else self.entry_lines).extend(lines)
                self.slot[v.key] = name
        self.vals = Layout(f"p{self.i}_vals", tuple(scal + arrs))
        #: entry values kept for the return in the in-flight map (else the return needs only the cookie)
        self.stash = bool(self.entry_lines)

    # -- reading values at entry
    def _raw(self, v: Value, name: str) -> list[str]:
        pc = v.piece
        if pc is None:
            raise InternalError(f"the compiler was given a probe it cannot compile: value {v.key} has no place")
        ty = _int_type(pc.size if v.kind != "string" else 8, v.signed and v.kind != "string")
        if pc.where == "reg":
            _require(pc.reg in _REGS, f"register {pc.reg!r} is not an argument register")
            shifted = f"(ctx->{pc.reg} >> {int(pc.shift)})" if pc.shift else f"ctx->{pc.reg}"
            return [f"{name} = ({ty}){shifted};"]
        _require(pc.where == "stack", f"value {v.key} is in {pc.where!r}, neither a register nor the stack")
        return [
            "{",
            f"    {ty} t_ = 0;",
            f"    bpf_probe_read_user(&t_, sizeof(t_), (void *)(ctx->sp + {8 + int(pc.offset)}));",
            f"    {name} = t_;",
            "}",
        ]

    def _read_scalar(self, v: Value, slot: str) -> list[str]:
        return self._raw(v, f"v->{slot}")

    def _read_string(self, v: Value, slot: str) -> list[str]:
        lines = ["{", "    u64 p_ = 0;"]
        lines += ["    " + x for x in self._raw(v, "p_")]
        lines += ["    " + x for x in self._string_lines("p_", slot)]
        return lines + ["}"]

    def _read_through(self, v: Value, slot: str) -> list[str]:
        """``v->slot`` = the ``size`` bytes at ``pointer + offset`` (sign-extended if signed), with its
        status in ``v->slot_len``: STR_NULL for a NULL pointer, the helper's error (counted), else the size."""
        d = v.deref
        if d is None:
            raise InternalError(f"the compiler was given a probe it cannot compile: {v.key} reads through no pointer")
        ty = _int_type(d.size, v.signed)
        return [
            "{",
            f"    u64 q_ = (u64){self.vexpr(d.pointer)};",
            f"    {ty} t_ = 0;",
            "    if (!q_) {",
            f"        v->{slot}_len = {int(STR_NULL)};",
            "    } else {",
            f"        long r_ = bpf_probe_read_user(&t_, sizeof(t_), (void *)(q_ + {int(d.offset)}));",
            f"        v->{slot}_len = r_ ? r_ : {int(d.size)};",
            "        if (r_)",
            f"            p{self.i}_stat(INGERO_S_READ_FAILED);",
            "    }",
            f"    v->{slot} = t_;",
            "}",
        ]

    def status(self, key: str) -> str | None:
        """C for the read status of a value (``> 0``: read) when it was read through a pointer or computed
        from such values; None when it cannot miss."""
        v = self.p.value(key)
        if v.kind == "string" or v.source == "deref":
            return f"{self.vexpr(key)}_len"
        if v.expr is not None:
            parts = [st for k in dict.fromkeys(v.expr.keys()) if (st := self.status(k)) is not None]
            if not parts:
                return None
            out = "8"
            for st in reversed(parts):
                out = f"({st} <= 0 ? {st} : {out})"
            return out
        return None

    def _string_lines(self, ptr: str, slot: str) -> list[str]:
        """Read the string at ``ptr`` into ``v->slot``, zero-filled (so equal strings are equal keys), and
        its status into ``v->slot_len``: STR_NULL for a NULL pointer, the helper's error for a failed read
        (counted), else the bytes read with the NUL."""
        return [
            "{",
            f"    u64 q_ = {ptr};",
            f"    __builtin_memset(v->{slot}, 0, sizeof(v->{slot}));",
            "    if (!q_) {",
            f"        v->{slot}_len = {int(STR_NULL)};",
            "    } else {",
            f"        v->{slot}_len = bpf_probe_read_user_str(v->{slot}, sizeof(v->{slot}), (void *)q_);",
            f"        if (v->{slot}_len < 0)",
            f"            p{self.i}_stat(INGERO_S_READ_FAILED);",
            "    }",
            "}",
        ]

    # -- expressions
    def vexpr(self, key: str) -> str:
        v = self.p.value(key)
        if v.source in ("arg", "deref"):
            return f"v->{self.slot[key]}"
        if v.expr is not None:
            return self.arith(v.expr)
        return {
            "retval": "v->sret" if v.kind == "string" else "retval",
            "latency": "latency",
            "pid": "(v->pid_tgid >> 32)",
            "tid": "((u32)v->pid_tgid)",
            "ts": "v->ts",
            "symbol": "v->cookie",
            "comm": "v->comm",
            "stack": "v->stack_id",
            "pystack": "v->stack_py",
        }[v.source]

    def arith(self, e: RArith) -> str:
        """C for integer arithmetic in 64 bits: + - * wrap (computed unsigned, then typed); / and shifts
        through the helpers of ingero_probe.h, which define x / 0 = 0 and shifts by 64 or more."""
        ty = "s64" if e.signed else "u64"

        def term(t) -> str:
            if isinstance(t, Const):
                c = int(t.value)
                return f"((s64){c}LL)" if e.signed or c < 0 else f"((u64){c & 0xFFFFFFFFFFFFFFFF}ULL)"
            if isinstance(t, RArith):
                return f"(({ty}){self.arith(t)})"
            return f"(({ty}){self.vexpr(t.key)})"

        left, right = term(e.left), term(e.right)
        if e.op in ("+", "-", "*"):
            return f"(({ty})((u64){left} {e.op} (u64){right}))"
        helper = {("/", True): "ingero_sdiv", ("/", False): "ingero_udiv", ("<<", True): "ingero_shl",
                  ("<<", False): "ingero_shl", (">>", True): "ingero_sar", (">>", False): "ingero_shr"}[
            (e.op, e.signed)]
        return f"(({ty}){helper}({left}, {right}))"

    def expr(self, e: RExpr) -> str:
        if isinstance(e, RAnd):
            return "(" + " && ".join(self.expr(i) for i in e.items) + ")"
        if isinstance(e, ROr):
            return "(" + " || ".join(self.expr(i) for i in e.items) + ")"
        if isinstance(e, RNot):
            return f"(!{self.expr(e.item)})"
        if isinstance(e, RSymbolIn):
            inner = " || ".join(f"v->cookie == {int(c)}" for c in e.cookies)
            return f"(!({inner}))" if e.negate else f"({inner})"
        _require(isinstance(e, RCompare) and e.op in _CMP, f"not a comparison the compiler knows: {e!r}")
        left, right = e.left, e.right
        _require(isinstance(left, ValueRef), f"the left side of a comparison is no value: {left!r}")
        if isinstance(right, StrConst):
            data = list(right.value) + [0]
            lit = ", ".join(str(int(b)) for b in data)
            n = len(data)
            test = f"({{ const char c_[{n}] = {{{lit}}}; ingero_streq({self.vexpr(left.key)}, c_, {n}); }})"
            if self.p.value(left.key).kind == "string":  # NULL (and a failed read) equals no string
                test = f"({self.vexpr(left.key)}_len > 0 && {test})"
            return test if e.op == "==" else f"(!{test})"
        lv = self.p.value(left.key)
        if isinstance(right, Const):
            signed = lv.signed
            c = int(right.value)
            rc = f"{c}LL" if signed else f"{c & 0xFFFFFFFFFFFFFFFF}ULL"
            cast = "s64" if signed else "u64"
            return self._read_ok([left.key], f"(({cast}){self.vexpr(left.key)} {e.op} ({cast}){rc})")
        _require(isinstance(right, ValueRef), f"the right side of a comparison is no value: {right!r}")
        rv = self.p.value(right.key)
        cast = "s64" if (lv.signed and rv.signed) else "u64"
        test = f"(({cast}){self.vexpr(left.key)} {e.op} ({cast}){self.vexpr(right.key)})"
        return self._read_ok([left.key, right.key], test)

    def _read_ok(self, keys: list[str], test: str) -> str:
        """A comparison of values read through pointers holds only when they were read (a miss matches
        nothing, whatever the operator)."""
        sts = [st for k in keys if (st := self.status(k)) is not None]
        return f"({' && '.join(f'{st} > 0' for st in sts)} && {test})" if sts else test

    def retval_expr(self) -> str:
        try:
            v = self.p.value("retval")
        except KeyError:
            return "0"
        if v.kind == "string" or v.size >= 8:
            return "(s64)PT_REGS_RC(ctx)"
        return f"(s64)({_int_type(v.size, v.signed)})PT_REGS_RC(ctx)"

    # -- record
    def event(self) -> tuple[Layout | None, list[str]]:
        keys = [k for k in self.p.record if k not in HEADER_KEYS]
        if not self.p.record:
            return None, []
        scal, arrs, lines = self._copy_values(keys, "f", "e->")
        return Layout(f"p{self.i}_payload", tuple(scal + arrs)), lines

    def _copy_values(self, keys, prefix: str, dest: str) -> tuple[list[LayoutField], list[LayoutField], list[str]]:
        """Fields ``{prefix}0..`` for the values ``keys`` (scalars first, then char arrays) and the C lines
        that copy them into ``{dest}field``."""
        scal: list[LayoutField] = []
        arrs: list[LayoutField] = []
        lines: list[str] = []
        for j, k in enumerate(keys):
            v = self.p.value(k)
            name = f"{prefix}{j}"
            if v.kind in ("string", "comm"):
                arrs.append(LayoutField(name, "char", v.size, k))
                lines.append(f"__builtin_memcpy({dest}{name}, {self.vexpr(k)}, {int(v.size)});")
                if v.kind == "string":
                    scal.append(LayoutField(f"{name}_len", "s64", 0, k, "len"))
                    lines.append(f"{dest}{name}_len = {self.vexpr(k)}_len;")
            else:
                scal.append(LayoutField(name, "s64" if v.signed else "u64", 0, k))
                lines.append(f"{dest}{name} = {self.vexpr(k)};")
                if v.kind == "stack":  # its Python frames ride along, merged by the decoder
                    scal.append(LayoutField(f"{name}_py", "u64", 0, k, "py"))
                    lines.append(f"{dest}{name}_py = v->stack_py;")
                st = self.status(k)
                if st is not None:
                    scal.append(LayoutField(f"{name}_len", "s64", 0, k, "len"))
                    lines.append(f"{dest}{name}_len = {st};")
        return scal, arrs, lines

    def agg(self) -> tuple[Layout, Layout, list[str], list[str]] | None:
        if not self.p.aggregates:
            return None
        kscal, karrs, key_lines = self._copy_values(self.p.by, "k", "key.")
        if not kscal and not karrs:
            kscal.append(LayoutField("none", "u64"))
        fields = [LayoutField("count", "u64")]
        upd: list[str] = []
        for j, a in enumerate(self.p.aggregates):
            if a.func == "count":
                continue
            v = self.p.value(a.value)  # type: ignore[arg-type]
            ty = "s64" if v.signed else "u64"
            x = f"(({ty}){self.vexpr(a.value)})"  # type: ignore[arg-type]
            name = f"{a.func}{j}"
            st = self.status(a.value)  # type: ignore[arg-type]
            if st is not None:  # a value that was not read is not aggregated (the miss is counted)
                upd.append(f"if ({st} > 0) {{")
            if a.func == "sum":
                fields.append(LayoutField(name, ty))
                upd.append(f"__sync_fetch_and_add(&a->{name}, {x});")
            elif a.func == "avg":
                fields += [LayoutField(f"{name}_sum", ty), LayoutField(f"{name}_n", "u64")]
                upd += [f"__sync_fetch_and_add(&a->{name}_sum, {x});", f"__sync_fetch_and_add(&a->{name}_n, 1);"]
            elif a.func == "lhist":
                lo, hi, step = (int(x_) for x_ in a.params)
                nb = a.lhist_buckets
                fields.append(LayoutField(name, "u64", nb))
                below = f"x_ < {lo}LL" if v.signed else (f"x_ < {lo}ULL" if lo > 0 else "0")
                above = f"x_ >= {hi}LL" if v.signed else (f"x_ >= {hi}ULL" if hi > 0 else "1")
                upd += [
                    "{",
                    f"    {ty} x_ = {x};",
                    "    u64 b_;",
                    f"    if ({below})",
                    "        b_ = 0;",
                    f"    else if ({above})",
                    f"        b_ = {nb - 1};",
                    "    else",
                    f"        b_ = 1 + ((u64)x_ - (u64){lo}LL) / {step}ULL;",
                    "    asm volatile(\"\" : \"+r\"(b_));  /* keep the bound check: the verifier needs it */",
                    f"    if (b_ > {nb - 1})",
                    f"        b_ = {nb - 1};",
                    f"    __sync_fetch_and_add(&a->{name}[b_], 1);",
                    "}",
                ]
            elif a.func in ("min", "max"):
                fields.append(LayoutField(name, ty))
                cmp = "<" if a.func == "min" else ">"
                if st is None:
                    upd.append(f"if (!seen || {x} {cmp} a->{name}) a->{name} = {x};")
                else:  # calls whose value was not read do not count as seen
                    fields.append(LayoutField(f"{name}_n", "u64"))
                    upd.append(f"if (!a->{name}_n || {x} {cmp} a->{name}) a->{name} = {x};")
                    upd.append(f"__sync_fetch_and_add(&a->{name}_n, 1);")
            elif a.func == "hist":
                fields.append(LayoutField(name, "u64", 65))
                neg = f"{x} < 0 ? 0 : " if v.signed else ""
                upd += [
                    "{",
                    f"    u64 b_ = {neg}ingero_log2((u64){x});",
                    "    asm volatile(\"\" : \"+r\"(b_));  /* keep the bound check: the verifier needs it */",
                    "    if (b_ > 64)",
                    "        b_ = 64;",
                    f"    __sync_fetch_and_add(&a->{name}[b_], 1);",
                    "}",
                ]
            else:
                raise InternalError(f"aggregation {a.func!r} is not one the compiler knows ({', '.join(AGGS)})")
            if st is not None:
                upd.append("}")
        # the key must be fully initialised: scalars first, then byte arrays padded to 8
        karrs = [LayoutField(f.name, f.ctype, (f.length + 7) // 8 * 8, f.key) for f in karrs]
        return (
            Layout(f"p{self.i}_key", tuple(kscal + karrs)),
            Layout(f"p{self.i}_agg", tuple(fields)),
            key_lines,
            upd,
        )


def compile_spec(
    spec: ResolvedSpec,
    *,
    ringbuf_pages: int = 256,
    agg_entries: int = 10240,
    inflight_entries: int = 10240,
    stack_entries: int = 4096,
    tree_filter: bool = False,
    python_extern: bool = False,
) -> CompiledSpec:
    """The BPF program of a resolved spec: one C text (one clang run) with one entry program per probe
    and one return program per probe that needs it, and the layouts the runtime decodes with.

    ``tree_filter``: count only calls of the processes in the ``ingero_targets`` map that a live trace's
    standard probe set shares (it must be loaded in this process): the traced tree, forks included.
    ``python_extern``: the Python frame walker uses that standard set's process table too (which it fills)."""
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError("ringbuf_pages must be a power of two")
    ctxs = []
    compiled = []
    for p in spec.probes:
        em = _ProbeEmitter(p)
        event, record_lines = em.event()
        agg = em.agg()
        ctx = {
            "index": p.index,
            "vals_struct": em.vals.c_struct(),
            "needs_return": p.needs_return,
            "stash": p.needs_return and em.stash,
            "entry_lines": em.entry_lines,
            "return_lines": em.return_lines,
            "filter": em.expr(p.filter) if p.filter is not None else "",
            "filter_at_return": p.filter is not None and p.filter_at_return,
            "rate": int(p.budgets.rate) if p.budgets.rate else 0,
            "events": int(p.budgets.events) if p.budgets.events else 0,
            "retval_expr": em.retval_expr(),
            "event_struct": "",
            "record_lines": record_lines,
            "agg": None,
        }
        if event is not None:
            payload = "\n".join(line for line in event.c_struct().splitlines()[1:-1])
            ctx["event_struct"] = (
                f"struct p{p.index}_event {{\n    struct ingero_event_hdr h;\n"
                + (payload + "\n" if payload else "")
                + "};"
            )
        if agg is not None:
            key, val, key_lines, upd = agg
            ctx["agg"] = {
                "key_struct": key.c_struct(),
                "val_struct": val.c_struct(),
                "key_lines": key_lines,
                "update_lines": upd,
            }
        ctxs.append(ctx)
        compiled.append(
            CompiledProbe(
                probe=p,
                program=f"p{p.index}_session" if p.needs_return else f"p{p.index}_entry",
                session=p.needs_return,
                event=event,
                agg_key=agg[0] if agg else None,
                agg_val=agg[1] if agg else None,
                stats_map=f"p{p.index}_stats",
                aggs_map=f"p{p.index}_aggs" if agg else None,
            )
        )
    any_stack = any(v.source == "stack" for p in spec.probes for v in p.values)
    any_python = any(v.source in ("stack", "pystack") for p in spec.probes for v in p.values)
    text = (
        _env()
        .get_template("probe.bpf.c.j2")
        .render(
            header_struct=EVENT_HEADER.c_struct() + "\n" + EVENT_HEADER.c_checks(),
            stats_enum=stats_enum(),
            ringbuf_pages=ringbuf_pages,
            any_stack=any_stack,
            py_walker=(data_dir("bpf") / "ingero_py.h").read_text() if any_python else "",
            python_extern=python_extern,
            stack_entries=stack_entries,
            inflight_entries=inflight_entries,
            agg_entries=agg_entries,
            probes=ctxs,
            tree_filter=tree_filter,
        )
    )
    return CompiledSpec(spec, text, tuple(compiled), any_stack, ringbuf_pages, any_python,
                        any_python and python_extern)

