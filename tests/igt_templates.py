"""IGT's shader templates, read from an IGT source tree, for the ISA tests.

`igt_source()` finds the tree: `IGT_SRC`, else /tmp/igt-eu/igt-gpu-tools-b3d809d5, else it
extracts the three files needed from ../shared/igt/igt-gpu-tools-b3d809d5.tar.xz beside the
repository (or `IGT_TARBALL`, or `IGT_SRC` naming a .tar.xz, as tools/build-igt.sh takes it) there; None when there is none of them.  `generated_templates()` parses
`lib/gpgpu_shader.c.gen.iga64_codes.c`; `template_sources()` takes the assembly text of every
`emit_iga64_code` in `lib/gpgpu_shader.c` and runs it through a small C-preprocessor stand-in
for GEN_VER (the `#if`s and macros of `lib/iga64_macros.h`), as IGT's generator does with cpp.
"""

from __future__ import annotations

import os
import re
import tarfile

IGT_DIR_NAME = "igt-gpu-tools-b3d809d5"
DEFAULT_TREE = os.path.join("/tmp/igt-eu", IGT_DIR_NAME)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARBALL = os.path.join(os.path.dirname(_REPO), "shared", "igt", f"{IGT_DIR_NAME}.tar.xz")
NEEDED = ("lib/gpgpu_shader.c", "lib/gpgpu_shader.c.gen.iga64_codes.c", "lib/iga64_macros.h")
IGA64_ARG0 = 0xC0DED000


def igt_source() -> str | None:
    env = os.environ.get("IGT_SRC")
    if env and not env.endswith(".tar.xz"):
        return env if os.path.isfile(os.path.join(env, NEEDED[1])) else None
    if all(os.path.isfile(os.path.join(DEFAULT_TREE, n)) for n in NEEDED):
        return DEFAULT_TREE
    tarball = env or os.environ.get("IGT_TARBALL", DEFAULT_TARBALL)
    if not os.path.isfile(tarball):
        return None
    os.makedirs(os.path.dirname(DEFAULT_TREE), exist_ok=True)
    with tarfile.open(tarball) as tar:
        members = [tar.getmember(f"{IGT_DIR_NAME}/{n}") for n in NEEDED]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(os.path.dirname(DEFAULT_TREE), members=members, filter="data")
        else:  # Python before 3.11.4: the members are three regular files named above
            tar.extractall(os.path.dirname(DEFAULT_TREE), members=members)
    return DEFAULT_TREE


def generated_templates(tree: str) -> dict[str, list[tuple[int, list[int]]]]:
    """name -> [(gen_ver, dwords)] in the file's (decreasing) order."""
    text = open(os.path.join(tree, NEEDED[1])).read()
    out = {}
    for m in re.finditer(r"iga64_code_(\w+)\[\] = \{(.*?)\n\};", text, re.S):
        entries = []
        for e in re.finditer(r"\.gen_ver = (\d+), \.size = (\d+), \.code = "
                             r"\(const uint32_t \[\]\) \{(.*?)\}\}", m.group(2), re.S):
            code = [int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]+", e.group(3))]
            assert len(code) == int(e.group(2)), m.group(1)
            entries.append((int(e.group(1)), code))
        out[m.group(1)] = entries
    return out


def code_for(entries: list[tuple[int, list[int]]], gen_ver: int) -> list[int]:
    """The entry IGT's __emit_iga64_code picks: the first whose gen_ver is <= the device's."""
    return next(code for ver, code in entries if gen_ver >= ver)


# --- template sources and the preprocessor stand-in ------------------------------------------
def _c_string(body: str) -> str:
    body = body.replace("\\\n", "")
    return body.replace("\\n", "\n").replace("\\t", "\t")


def template_sources(tree: str) -> dict[str, str]:
    text = open(os.path.join(tree, NEEDED[0])).read()
    out = {}
    for m in re.finditer(r'emit_iga64_code\(shdr,\s*(\w+),\s*"((?:[^"\\]|\\.|\\\n)*)"',
                         text, re.S):
        out[m.group(1)] = _c_string(m.group(2))
    return out


def _condition(expr: str, gen_ver: int) -> bool:
    m = re.fullmatch(r"\s*GEN_VER\s*(<=|>=|<|>|==)\s*(\d+)\s*", expr)
    if not m:
        raise ValueError(f"unsupported #if {expr!r}")
    a, b = gen_ver, int(m.group(2))
    return {"<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b, "==": a == b}[m.group(1)]


def _conditionals(lines: list[str], gen_ver: int) -> list[str]:
    out, stack = [], []
    for line in lines:
        s = line.strip()
        if s.startswith(("#ifndef", "#ifdef")):  # include guards only
            stack.append(True)
        elif s.startswith("#if "):
            stack.append(_condition(s[4:], gen_ver))
        elif s.startswith("#else"):
            stack[-1] = not stack[-1]
        elif s.startswith("#endif"):
            stack.pop()
        elif all(stack):
            out.append(line)
    return out


def macros(tree: str, gen_ver: int) -> dict[str, tuple[list[str] | None, str]]:
    raw = open(os.path.join(tree, NEEDED[2])).read().replace("\\\n", " ")
    defs = {}
    for line in _conditionals(raw.splitlines(), gen_ver):
        m = re.match(r"\s*#define\s+(\w+)(\(([^)]*)\))?\s*(.*)$", line)
        if m and not m.group(1).endswith("_H"):
            params = [p.strip() for p in m.group(3).split(",")] if m.group(2) else None
            defs[m.group(1)] = (params, m.group(4).strip())
    return defs


def _split_args(text: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    args.append(cur.strip())
    return args


def _expand(text: str, defs: dict) -> str:
    for _ in range(20):
        changed = False
        m = re.search(r"\bARG\((\d+)\)", text)
        if m:
            text = text[:m.start()] + hex(IGA64_ARG0 + int(m.group(1))) + text[m.end():]
            continue
        for name, (params, body) in defs.items():
            if params is None:
                new = re.sub(rf"\b{name}\b", body, text)
            else:
                mm = re.search(rf"\b{name}\(", text)
                if not mm:
                    continue
                depth, i = 1, mm.end()
                while depth:
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                args = _split_args(text[mm.end():i - 1])
                sub = body
                for p, a in zip(params, args):
                    sub = re.sub(rf"\b{p}\b", lambda _m, a=a: a, sub)
                new = text[:mm.start()] + sub + text[i:]
            if new != text:
                text, changed = new, True
                break
        if not changed:
            break
    # constant arithmetic the macros leave, such as "(4 - 1)"
    return re.sub(r"\(\s*(\d+)\s*-\s*(\d+)\s*\)", lambda m: str(int(m[1]) - int(m[2])), text)


def preprocess(source: str, defs: dict, gen_ver: int) -> str:
    lines = _conditionals(source.splitlines(), gen_ver)
    return "\n".join(_expand(line.split("//", 1)[0], defs) for line in lines)
