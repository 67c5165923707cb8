"""Plain C99 for microcontrollers: ``model.c`` + ``model.h`` with one call, no heap, tables in ``const``.

``void uaap_predict_proba(const float *x, float *proba)`` takes one row (``UAAP_N_FEATURES`` floats,
already scaled as the manifest says) and writes ``UAAP_N_CLASSES`` probabilities; a regression model's
``void uaap_predict(const float *x, float *y)`` writes its one prediction in the target's units
(``UAAP_N_CLASSES`` is then 1; ``UAAP_PREDICT`` names whichever the header declares). Neural and linear
models are emitted from :mod:`edge.layers` (dense, ReLU, conv2d, max-pool loops over const weights),
trees and boosters from :mod:`edge.trees` (flat node tables, ``x < threshold`` in float32). Numbers
are printed with 9 significant digits, which round-trips every float32 exactly.
We write the emitters ourselves: emlearn prints 6-digit thresholds and needs ``leaf_bits`` for soft
leaves, tl2cgen/treelite only cover trees; one emitter keeps one API and exact splits for all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ExportError
from edge.layers import Layer, shapes
from edge.trees import Ensemble

HEADER = "model.h"
SOURCE = "model.c"
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")

HARNESS = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "model.h"

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* harness ROWS.bin OUT.bin [REPEATS]: float32 rows in, float32 probabilities out;
   with REPEATS, also print the median nanoseconds per single-row call. */
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s rows.bin out.bin [repeats]\n", argv[0]); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    long n = bytes / (long)(sizeof(float) * UAAP_N_FEATURES);
    float *x = malloc(sizeof(float) * UAAP_N_FEATURES * (size_t)(n > 0 ? n : 1));
    float *p = malloc(sizeof(float) * UAAP_N_CLASSES * (size_t)(n > 0 ? n : 1));
    if (fread(x, sizeof(float) * UAAP_N_FEATURES, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "short read\n");
        return 1;
    }
    fclose(f);
    for (long i = 0; i < n; ++i) UAAP_PREDICT(x + i * UAAP_N_FEATURES, p + i * UAAP_N_CLASSES);
    FILE *o = fopen(argv[2], "wb");
    if (!o) { perror(argv[2]); return 1; }
    fwrite(p, sizeof(float) * UAAP_N_CLASSES, (size_t)n, o);
    fclose(o);
    if (argc > 3 && n > 0) {
        int reps = atoi(argv[3]);
        double *ns = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
        for (int r = 0; r < reps; ++r) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (long i = 0; i < n; ++i) UAAP_PREDICT(x + i * UAAP_N_FEATURES, p + i * UAAP_N_CLASSES);
            clock_gettime(CLOCK_MONOTONIC, &b);
            ns[r] = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n;
        }
        qsort(ns, (size_t)reps, sizeof(double), cmp);
        printf("%.1f\n", ns[reps / 2]);
    }
    return 0;
}
"""


def lit(value: float) -> str:
    """One float32 as a C literal with 9 significant digits (exact round trip)."""
    s = f"{float(np.float32(value)):.9g}"
    if not any(ch in s for ch in ".en"):
        s += ".0"
    return s + "f"


def fmt(values: np.ndarray, per_line: int = 8) -> str:
    """float32 values as a C initialiser (9 significant digits: exact)."""
    items = [lit(v) for v in np.asarray(values, dtype=np.float32).ravel()]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if items else "{0}"


def ints(values: np.ndarray, per_line: int = 16) -> str:
    """Integers as a C initialiser."""
    items = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if items else "{0}"


def header(n_features: int, n_classes: int, note: str, regression: bool = False) -> str:
    """The public header."""
    if regression:
        api = (
            "/* One row of UAAP_N_FEATURES floats in, one prediction (the target's units) out. No heap, no state. */\n"
            "void uaap_predict(const float *x, float *y);\n#define UAAP_PREDICT uaap_predict\n\n#endif\n"
        )
    else:
        api = (
            "/* One row of UAAP_N_FEATURES floats in, UAAP_N_CLASSES class probabilities out. No heap, no state. */\n"
            "void uaap_predict_proba(const float *x, float *proba);\n"
            "#define UAAP_PREDICT uaap_predict_proba\n\n#endif\n"
        )
    return (
        f"/* {note} */\n#ifndef UAAP_MODEL_H\n#define UAAP_MODEL_H\n\n"
        f"#define UAAP_N_FEATURES {n_features}\n#define UAAP_N_CLASSES {n_classes}\n\n" + api
    )


_SOFTMAX = """
static void softmax(const float *z, float *p, int n) {
    float m = z[0], s = 0.0f;
    for (int i = 1; i < n; ++i) if (z[i] > m) m = z[i];
    for (int i = 0; i < n; ++i) { p[i] = expf(z[i] - m); s += p[i]; }
    for (int i = 0; i < n; ++i) p[i] /= s;
}
"""

_HELPERS = {
    "dense": """
static void dense(const float *x, const float *w, const float *b, float *y, int n_in, int n_out) {
    for (int o = 0; o < n_out; ++o) {
        const float *row = w + (long)o * n_in;
        float s = b[o];
        for (int i = 0; i < n_in; ++i) s += row[i] * x[i];
        y[o] = s;
    }
}
""",
    "relu": """
static void relu(float *x, int n) {
    for (int i = 0; i < n; ++i) if (x[i] < 0.0f) x[i] = 0.0f;
}
""",
    "conv2d": """
static void conv2d(const float *x, const float *w, const float *b, float *y,
                   int c, int h, int wd, int oc, int k, int pad) {
    int oh = h + 2 * pad - k + 1, ow = wd + 2 * pad - k + 1;
    for (int o = 0; o < oc; ++o)
        for (int i = 0; i < oh; ++i)
            for (int j = 0; j < ow; ++j) {
                float s = b[o];
                for (int ci = 0; ci < c; ++ci)
                    for (int u = 0; u < k; ++u) {
                        int yy = i + u - pad;
                        if (yy < 0 || yy >= h) continue;
                        for (int v = 0; v < k; ++v) {
                            int xx = j + v - pad;
                            if (xx < 0 || xx >= wd) continue;
                            s += w[((o * c + ci) * k + u) * k + v] * x[(ci * h + yy) * wd + xx];
                        }
                    }
                y[(o * oh + i) * ow + j] = s;
            }
}
""",
    "maxpool2d": """
static void maxpool2d(const float *x, float *y, int c, int h, int w, int k) {
    int oh = h / k, ow = w / k;
    for (int ci = 0; ci < c; ++ci)
        for (int i = 0; i < oh; ++i)
            for (int j = 0; j < ow; ++j) {
                float m = x[(ci * h + i * k) * w + j * k];
                for (int u = 0; u < k; ++u)
                    for (int v = 0; v < k; ++v) {
                        float t = x[(ci * h + i * k + u) * w + j * k + v];
                        if (t > m) m = t;
                    }
                y[(ci * oh + i) * ow + j] = m;
            }
}
""",
}


def emit_network(
    layers: list[Layer], n_features: int, n_classes: int, note: str, regression: bool = False
) -> tuple[str, str]:
    """``(model.h, model.c)`` for a layer list; activations ping-pong between two static buffers.

    ``regression``: the last layer's output is the prediction (no softmax), written by ``uaap_predict``."""
    outs = shapes(layers, n_features)
    biggest = max([int(np.prod(s)) for s in outs] + [n_features])
    tables, body = [], []
    used = {layer.op for layer in layers}
    cur, shape, nbuf = "x", (n_features,), 0
    for i, (layer, out_shape) in enumerate(zip(layers, outs, strict=True)):
        size = int(np.prod(out_shape))
        dst = f"buf[{nbuf}]"
        if layer.op == "dense":
            assert layer.weight is not None and layer.bias is not None
            tables.append(f"static const float W{i}[{layer.weight.size}] = {fmt(layer.weight)};")
            tables.append(f"static const float B{i}[{layer.bias.size}] = {fmt(layer.bias)};")
            body.append(f"    dense({cur}, W{i}, B{i}, {dst}, {int(np.prod(shape))}, {size});")
        elif layer.op == "conv2d":
            assert layer.weight is not None and layer.bias is not None
            c, h, w = shape
            tables.append(f"static const float W{i}[{layer.weight.size}] = {fmt(layer.weight)};")
            tables.append(f"static const float B{i}[{layer.bias.size}] = {fmt(layer.bias)};")
            body.append(
                f"    conv2d({cur}, W{i}, B{i}, {dst}, {c}, {h}, {w}, {out_shape[0]}, {layer.kernel}, {layer.padding});"
            )
        elif layer.op == "maxpool2d":
            c, h, w = shape
            body.append(f"    maxpool2d({cur}, {dst}, {c}, {h}, {w}, {layer.kernel});")
        elif layer.op == "relu":
            if cur == "x":
                raise ExportError("a ReLU on the raw input is not supported by the C emitter")
            body.append(f"    relu({cur}, {size});")
            shape = out_shape
            continue
        elif layer.op == "reshape":  # memory layout is already row-major NCHW
            shape = out_shape
            continue
        cur, shape, nbuf = dst, out_shape, 1 - nbuf
    if cur == "x":
        raise ExportError("the network has no dense or conv layer to emit")
    helpers = "".join(_HELPERS[op] for op in ("dense", "relu", "conv2d", "maxpool2d") if op in used)
    if regression:
        entry = "\nvoid uaap_predict(const float *x, float *y) {\n"
        tail = f"\n    for (int k = 0; k < {n_classes}; ++k) y[k] = {cur}[k];\n}}\n"
    else:
        entry = "\nvoid uaap_predict_proba(const float *x, float *proba) {\n"
        tail = f"\n    softmax({cur}, proba, {n_classes});\n}}\n"
    source = (
        f'/* {note} */\n#include <math.h>\n#include "model.h"\n\n'
        + "\n".join(tables)
        + f"\n\nstatic float buf[2][{biggest}];\n"
        + helpers
        + ("" if regression else _SOFTMAX)
        + entry
        + "\n".join(body)
        + tail
    )
    return header(n_features, n_classes, note, regression), source


def emit_ensemble(ens: Ensemble, note: str) -> tuple[str, str]:
    """``(model.h, model.c)`` for a tree ensemble: one table per field, a loop per tree."""
    feats, thr, left, right, roots, leaf_rows, targets = [], [], [], [], [], [], []
    offset = n_leaves = 0
    for tree in ens.trees:
        n = len(tree.feature)
        is_leaf = tree.feature < 0
        leaf_id = np.cumsum(is_leaf) - 1 + n_leaves
        roots.append(offset)
        feats.append(tree.feature)
        thr.append(np.where(is_leaf, 0.0, tree.threshold).astype(np.float32))
        left.append(np.where(is_leaf, leaf_id, tree.left + offset))
        right.append(np.where(is_leaf, 0, tree.right + offset))
        leaf_rows.append(tree.value[is_leaf])
        targets.append(max(tree.target, 0))
        offset += n
        n_leaves += int(is_leaf.sum())
    width = leaf_rows[0].shape[1]
    big = max(offset, n_leaves) > 32767
    idx_t = "int32_t" if big else "int16_t"
    feat_t = "int16_t" if ens.n_features < 32767 else "int32_t"
    per_tree = ens.link == "softmax"  # each boosted tree adds to one class's margin
    lines = [
        f"/* {note} */",
        '#include <math.h>\n#include <stdint.h>\n#include "model.h"\n',
        f"#define N_TREES {len(ens.trees)}\n#define WIDTH {width}\n",
        f"static const {feat_t} feature[{offset}] = {ints(np.concatenate(feats))};",
        f"static const float threshold[{offset}] = {fmt(np.concatenate(thr))};",
        f"/* inner node: children; leaf: left = row of leaf_value */\nstatic const {idx_t} left[{offset}] = "
        f"{ints(np.concatenate(left))};",
        f"static const {idx_t} right[{offset}] = {ints(np.concatenate(right))};",
        f"static const {idx_t} root[N_TREES] = {ints(np.asarray(roots))};",
        f"static const float leaf_value[{n_leaves * width}] = {fmt(np.concatenate(leaf_rows))};",
    ]
    if per_tree:
        lines.append(f"static const uint8_t target[N_TREES] = {ints(np.asarray(targets))};")
    acc_n = ens.n_classes if per_tree else width
    lines.append("\nvoid uaap_predict_proba(const float *x, float *proba) {")
    lines.append(f"    float acc[{acc_n}] = {{0}};")
    lines.append("    for (int t = 0; t < N_TREES; ++t) {")
    lines.append(f"        {idx_t} n = root[t];")
    lines.append("        while (feature[n] >= 0) n = (x[feature[n]] < threshold[n]) ? left[n] : right[n];")
    if per_tree:
        lines.append("        acc[target[t]] += leaf_value[left[n]];")
    else:
        lines.append("        for (int k = 0; k < WIDTH; ++k) acc[k] += leaf_value[left[n] * WIDTH + k];")
    lines.append("    }")
    bias = ens.bias
    if ens.link == "none":
        lines.append(f"    for (int k = 0; k < {ens.n_classes}; ++k) proba[k] = acc[k] / (float)N_TREES;")
    elif ens.link == "l1":  # class scores over their sum (a federated forest's class-weighted vote)
        lines.append(f"    float s = 0.0f;\n    for (int k = 0; k < {ens.n_classes}; ++k) s += acc[k];")
        lines.append(f"    for (int k = 0; k < {ens.n_classes}; ++k) proba[k] = acc[k] / s;")
    elif ens.link == "sigmoid":
        lines.append(f"    float p = 1.0f / (1.0f + expf(-(acc[0] + {lit(bias[0])})));")
        lines.append("    proba[0] = 1.0f - p;\n    proba[1] = p;")
    else:
        lines.append(f"    static const float bias[{ens.n_classes}] = {fmt(bias)};")
        lines.append("    float m = acc[0] + bias[0], s = 0.0f;")
        lines.append(
            f"    for (int k = 0; k < {ens.n_classes}; ++k) {{ acc[k] += bias[k]; if (acc[k] > m) m = acc[k]; }}"
        )
        lines.append(f"    for (int k = 0; k < {ens.n_classes}; ++k) {{ proba[k] = expf(acc[k] - m); s += proba[k]; }}")
        lines.append(f"    for (int k = 0; k < {ens.n_classes}; ++k) proba[k] /= s;")
    lines.append("}\n")
    return header(ens.n_features, ens.n_classes, note), "\n".join(lines)


def write(folder: Path, head: str, source: str) -> list[Path]:
    """Write ``model.h`` and ``model.c`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HEADER).write_text(head)
    (folder / SOURCE).write_text(source)
    return [folder / SOURCE, folder / HEADER]


def _gcc() -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise ExportError("no C compiler found (gcc/cc); install gcc to verify C exports (apt-get install gcc)")
    return gcc


def compile_harness(folder: Path, work: Path, opt: str = "-O2") -> Path:
    """Compile the bundle's C with a row-file harness into ``work``; compiler errors become ExportError."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "harness.c").write_text(HARNESS)
    exe = work / "harness"
    cmd = [_gcc(), opt, *CFLAGS, f"-I{folder}", str(work / "harness.c"), str(folder / SOURCE), "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ExportError(f"gcc could not compile the generated C ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return exe


def run_harness(exe: Path, X: np.ndarray, n_classes: int, repeats: int = 0) -> tuple[np.ndarray, float | None]:
    """Probabilities for rows ``X`` from the compiled harness (and median ns/row when ``repeats``)."""
    work = exe.parent
    rows, out = work / "rows.bin", work / "proba.bin"
    np.ascontiguousarray(X, dtype=np.float32).tofile(rows)
    cmd = [str(exe), str(rows), str(out)] + ([str(repeats)] if repeats else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ExportError(f"the compiled C harness failed (rc {proc.returncode}): {proc.stderr[-1000:]}")
    proba = np.fromfile(out, dtype=np.float32).reshape(len(X), n_classes)
    return proba.astype(np.float64), (float(proc.stdout.strip()) if repeats else None)


def footprint(folder: Path, work: Path) -> dict[str, Any]:
    """Code and RAM of ``model.c`` compiled for size (``-Os``): ``size -A`` sections and ``-fstack-usage``.

    RAM = .data + .bss + worst stack (the entry frame plus its deepest helper frame; libm's
    ``expf`` is not counted). Flash = .text + .rodata + .data. Measured with the host gcc.
    """
    work.mkdir(parents=True, exist_ok=True)
    obj = work / "model_os.o"
    cmd = [_gcc(), "-Os", *CFLAGS, "-fstack-usage", "-c", str(folder / SOURCE), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work)
    if proc.returncode != 0:
        raise ExportError(f"gcc -Os failed on the generated C:\n{proc.stderr[-2000:]}")
    size = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    sections: dict[str, int] = {}
    for line in size.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            name = parts[0]
            key = next(
                (k for k in (".text", ".rodata", ".data", ".bss") if name == k or name.startswith(k + ".")), None
            )
            if key:
                sections[key] = sections.get(key, 0) + int(parts[1])
    frames: dict[str, int] = {}
    su = obj.with_suffix(".su")
    for line in su.read_text().splitlines() if su.is_file() else []:
        m = re.match(r".*:(\w+)\s+(\d+)\s+(\S+)", line)
        if m:
            frames[m.group(1)] = int(m.group(2))
    entry = frames.get("uaap_predict_proba", frames.get("uaap_predict", 0))
    helpers = [v for k, v in frames.items() if k not in ("uaap_predict_proba", "uaap_predict")]
    stack = entry + (max(helpers) if helpers else 0)
    text, rodata = sections.get(".text", 0), sections.get(".rodata", 0)
    data, bss = sections.get(".data", 0), sections.get(".bss", 0)
    return {
        "compiler": "gcc -Os (host)",
        "text_bytes": text,
        "rodata_bytes": rodata,
        "data_bytes": data,
        "bss_bytes": bss,
        "stack_bytes": stack,
        "stack_frames": frames,
        "flash_bytes": text + rodata + data,
        "ram_bytes": data + bss + stack,
    }
