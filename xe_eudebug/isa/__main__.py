"""python3 -m xe_eudebug.isa {disasm,asm} FILE — Xe2 disassembler and assembler.

disasm: FILE holds instructions as raw little-endian bytes, or (with --hex) as hex dwords in
        any C-like text ("0x80000061, 0x1e054220, ..."); prints offset, dwords and text.
asm:    FILE holds IGA text; prints the dwords, four to a line (or writes --out as bytes).
"-" reads standard input.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys

from .encoding import DecodeError, decode
from .text import AsmError, assemble_dwords, disassemble_one


def _read(path: str, binary: bool) -> bytes | str:
    if path == "-":
        return sys.stdin.buffer.read() if binary else sys.stdin.read()
    with open(path, "rb" if binary else "r") as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m xe_eudebug.isa", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("disasm")
    d.add_argument("file")
    d.add_argument("--hex", action="store_true", help="the file is hex dwords as text")
    a = sub.add_parser("asm")
    a.add_argument("file")
    a.add_argument("--out", help="write the code as little-endian bytes here")
    args = ap.parse_args(argv)
    if args.cmd == "disasm":
        if args.hex:
            dwords = [int(x, 16) for x in re.findall(r"0x([0-9a-fA-F]{1,8})",
                                                     str(_read(args.file, False)))]
        else:
            raw = bytes(_read(args.file, True))
            if len(raw) % 16:
                print(f"{args.file}: {len(raw)} bytes is not whole 16-byte instructions",
                      file=sys.stderr)
                return 1
            dwords = list(struct.unpack(f"<{len(raw) // 4}I", raw))
        status = 0
        for i in range(0, len(dwords) - len(dwords) % 4, 4):
            words = " ".join(f"{w:08x}" for w in dwords[i:i + 4])
            try:
                text = disassemble_one(decode(dwords[i:i + 4], offset=4 * i))
            except DecodeError as e:
                text, status = f"<{e}>", 1
            print(f"{4 * i:06x}: {words}  {text}")
        return status
    try:
        code = assemble_dwords(str(_read(args.file, False)))
    except AsmError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "wb") as f:
            f.write(struct.pack(f"<{len(code)}I", *code))
    else:
        for i in range(0, len(code), 4):
            print(", ".join(f"0x{w:08x}" for w in code[i:i + 4]) + ",")
    return 0


if __name__ == "__main__":
    sys.exit(main())
