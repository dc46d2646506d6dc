"""The Xe2 (graphics version 20) instruction set as data: encoding, disassembler, assembler.

A low layer like `xe_eudebug.uapi`: it imports nothing from the rest of the package.
See docs/eu-isa.md.
"""

from .encoding import (DecodeError, EncodeError, Instruction, Operand, Swsb, decode,  # noqa: F401
                       decode_program, encode, encode_program)
