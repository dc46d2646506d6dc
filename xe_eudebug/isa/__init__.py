"""The Xe2 (graphics version 20) instruction set as data: encoding, disassembler, assembler;
and `mi`, the command streamer's command formats.

A low layer like `xe_eudebug.uapi`: it imports nothing from the rest of the package.
See docs/eu-isa.md.
"""

from .encoding import (DecodeError, EncodeError, Instruction, Operand, Swsb, decode,
                       decode_program, encode, encode_program)

__all__ = ["DecodeError", "EncodeError", "Instruction", "Operand", "Swsb", "decode",
           "decode_program", "encode", "encode_program"]
