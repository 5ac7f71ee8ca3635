# cython: language_level=3
"""Reads a compiled policy record (layout.py) back into a flat token stream, for the compiler's publish-time
check (verify.py). It reads the bytes on its own, as the evaluator does, sharing nothing with the lowering.

The stream is the record in prefix order: the effect, each scope's operator and operands, then the
condition's opcodes with their operands. Interned references are resolved to what they name: a string
index to its text, a uid index to its (type, id) pair, a type index to its name. Every count is written
out, so two different records never give the same stream.
"""

from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.string cimport memcpy

# Mirrors of authz/compiler/layout.py (tests/test_layout.py checks them).
cdef enum:
    V_FALSE, V_TRUE, V_LONG, V_STR, V_UID, V_SET, V_RECORD, V_EXT
cdef enum:
    S_ALL, S_EQ, S_IN, S_IS, S_IS_IN, S_IN_LIST
cdef enum:
    OP_LIT, OP_VAR, OP_GETATTR, OP_HAS, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_ADD, OP_SUB, OP_MUL, OP_IN, OP_CONTAINS, OP_CONTAINS_ALL, OP_CONTAINS_ANY, OP_HAS_TAG, OP_GET_TAG, OP_AND, OP_OR, OP_NOT, OP_NEG, OP_IS_EMPTY, OP_IF, OP_LIKE, OP_IS, OP_SET, OP_RECORD, OP_CALL, OP_STR

CONSTANTS = {
    "V_FALSE": V_FALSE,
    "V_TRUE": V_TRUE,
    "V_LONG": V_LONG,
    "V_STR": V_STR,
    "V_UID": V_UID,
    "V_SET": V_SET,
    "V_RECORD": V_RECORD,
    "V_EXT": V_EXT,
    "S_ALL": S_ALL,
    "S_EQ": S_EQ,
    "S_IN": S_IN,
    "S_IS": S_IS,
    "S_IS_IN": S_IS_IN,
    "S_IN_LIST": S_IN_LIST,
    "OP_LIT": OP_LIT,
    "OP_VAR": OP_VAR,
    "OP_GETATTR": OP_GETATTR,
    "OP_HAS": OP_HAS,
    "OP_EQ": OP_EQ,
    "OP_NE": OP_NE,
    "OP_LT": OP_LT,
    "OP_LE": OP_LE,
    "OP_GT": OP_GT,
    "OP_GE": OP_GE,
    "OP_ADD": OP_ADD,
    "OP_SUB": OP_SUB,
    "OP_MUL": OP_MUL,
    "OP_IN": OP_IN,
    "OP_CONTAINS": OP_CONTAINS,
    "OP_CONTAINS_ALL": OP_CONTAINS_ALL,
    "OP_CONTAINS_ANY": OP_CONTAINS_ANY,
    "OP_HAS_TAG": OP_HAS_TAG,
    "OP_GET_TAG": OP_GET_TAG,
    "OP_AND": OP_AND,
    "OP_OR": OP_OR,
    "OP_NOT": OP_NOT,
    "OP_NEG": OP_NEG,
    "OP_IS_EMPTY": OP_IS_EMPTY,
    "OP_IF": OP_IF,
    "OP_LIKE": OP_LIKE,
    "OP_IS": OP_IS,
    "OP_SET": OP_SET,
    "OP_RECORD": OP_RECORD,
    "OP_CALL": OP_CALL,
    "OP_STR": OP_STR,
}


class RecordError(ValueError):
    """The record's bytes do not decode."""


cdef class _Reader:
    cdef const uint8_t* p
    cdef Py_ssize_t pos, end
    cdef list out, strings, uids, types
    cdef int depth

    cdef inline uint8_t u8(self) except? 255:
        if self.pos >= self.end:
            raise RecordError("truncated record")
        self.pos += 1
        return self.p[self.pos - 1]

    cdef inline uint32_t u32(self) except? 0xFFFFFFFF:
        cdef uint32_t v
        if self.pos + 4 > self.end:
            raise RecordError("truncated record")
        memcpy(&v, self.p + self.pos, 4)
        self.pos += 4
        return v

    cdef inline str text(self, Py_ssize_t n):
        if n > self.end - self.pos:
            raise RecordError("truncated record")
        self.pos += n
        return (<const char*>self.p)[self.pos - n:self.pos].decode("utf-8", "surrogatepass")

    cdef inline void string(self) except *:
        self.out.append(self.strings[self.u32()])

    cdef inline void uid(self) except *:
        self.out.append(self.uids[self.u32()])

    cdef inline void type_name(self) except *:
        self.out.append(self.types[self.u32()])

    cdef void scope(self) except *:
        cdef uint8_t op = self.u8()
        cdef uint32_t n, i
        self.out.append(op)
        if op == S_ALL:
            self.pos += 8
        elif op == S_EQ or op == S_IN:
            self.uid()
            self.pos += 4
        elif op == S_IN_LIST:
            n = self.u32()
            self.out.append(n)
            self.pos += 4
            for i in range(n):
                self.uid()
        elif op == S_IS:
            self.pos += 4
            self.type_name()
        elif op == S_IS_IN:
            self.uid()
            self.type_name()
        else:
            raise RecordError(f"unknown scope operator {op}")

    cdef void value(self) except *:
        cdef uint8_t tag = self.u8()
        cdef uint32_t n, i
        cdef int64_t v
        self.out.append(tag)
        if tag == V_TRUE or tag == V_FALSE:
            return
        if tag == V_LONG:
            if self.pos + 8 > self.end:
                raise RecordError("truncated record")
            memcpy(&v, self.p + self.pos, 8)
            self.pos += 8
            self.out.append(v)
        elif tag == V_STR:
            self.out.append(self.text(self.u32()))
        elif tag == V_UID:
            self.uid()
        elif tag == V_SET:
            n = self.u32()
            self.out.append(n)
            for i in range(n):
                self.value()
        elif tag == V_RECORD:
            n = self.u32()
            self.out.append(n)
            for i in range(n):
                self.out.append(self.text(self.u32()))
                self.value()
        elif tag == V_EXT:
            self.out.append(self.u8())
            n = self.u8()
            self.out.append(n)
            for i in range(n):
                self.value()
        else:
            raise RecordError(f"unknown value tag {tag}")

    cdef void lazy(self) except *:
        cdef Py_ssize_t end = self.u32()
        end += self.pos
        self.expr()
        if self.pos != end:
            raise RecordError("a lazy operand's length is wrong")

    cdef void expr(self) except *:
        cdef uint8_t op = self.u8()
        cdef uint32_t n, i
        self.depth += 1
        if self.depth > 100000:
            raise RecordError("record nested too deeply")
        self.out.append(op)
        if op == OP_STR:
            self.string()
        elif op == OP_LIT:
            self.value()
        elif op == OP_VAR:
            self.out.append(self.u8())
        elif op == OP_GETATTR or op == OP_HAS:
            self.expr()
            self.string()
        elif op == OP_AND or op == OP_OR:
            self.expr()
            self.lazy()
        elif OP_EQ <= op <= OP_GET_TAG:
            self.expr()
            self.expr()
        elif op == OP_NOT or op == OP_NEG or op == OP_IS_EMPTY:
            self.expr()
        elif op == OP_IF:
            self.expr()
            self.lazy()
            self.lazy()
        elif op == OP_LIKE:
            self.expr()
            n = self.u32()
            self.out.append(n)
            for i in range(n):
                if self.u8():
                    self.string()
                else:
                    self.out.append(None)
        elif op == OP_IS:
            self.expr()
            self.type_name()
        elif op == OP_SET:
            n = self.u32()
            self.out.append(n)
            for i in range(n):
                self.expr()
        elif op == OP_RECORD:
            n = self.u32()
            self.out.append(n)
            for i in range(n):
                self.string()
                self.expr()
        elif op == OP_CALL:
            self.out.append(self.u8())
            n = self.u8()
            self.out.append(n)
            for i in range(n):
                self.expr()
        else:
            raise RecordError(f"unknown opcode {op}")
        self.depth -= 1


def record_tokens(const uint8_t[:] record, list strings, list uids, list types):
    """The token stream of one record; RecordError if its bytes don't decode, IndexError if it names an
    interned string, uid or type that does not exist."""
    cdef _Reader r = _Reader.__new__(_Reader)
    cdef Py_ssize_t end
    r.p = &record[0] if record.shape[0] else NULL
    r.pos, r.end, r.depth = 0, record.shape[0], 0
    r.out, r.strings, r.uids, r.types = [], strings, uids, types
    r.out.append(r.u8())
    r.scope()
    r.scope()
    r.scope()
    end = r.u32()
    end += r.pos
    if end != r.end:
        raise RecordError("the condition's length is wrong")
    if r.pos < end:
        r.expr()
    if r.pos != end:
        raise RecordError("the condition's length is wrong")
    return r.out
