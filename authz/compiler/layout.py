"""The byte format of a compiled generation: magic, version, value tags, opcodes and record shapes.

Everything is little-endian. `authz/_evaluator.pyx` repeats these constants; `tests/test_layout.py`
checks that both sides agree.

A generation is one blob (one LMDB value), read in place through a memoryview:

    header      MAGIC(8) VERSION(u32) then the u32 fields of HEADER_FIELDS
    types       per type: name (str), a u8 of KEY_IS_* flags, then the partner masks of its TYPE_KEY
                (u64 as principal, u64 as resource); `type_hash` maps name -> type index
    uids        per uid: type index (u32), flags (u8), its partner masks (u64 as principal, u64 as
                resource), then u32 offsets (0 = none) of its ancestors (u32 list), attrs, tags, the
                policies filed under it as an action, and its ancestor keys; then its id (str). Those
                parts follow the record, so a request reads them from adjacent lines.
    ancestor keys  the ancestors that are index keys, each with what a request needs of it: u32
                count, then per ancestor u32 uid index, u8 KEY_IS_* flags, u64 principal mask, u64
                resource mask (ANCESTOR_KEY bytes), so that gathering keys reads no ancestor's record
    pair index  (principal key, resource key) -> policies, open addressing, 12-byte entries
    policies    per policy: its index (u32), effect (u8), principal/action/resource scope, condition
                bytecode. The index's policy lists (pairs, actions, all) hold the offsets of these
                bodies, so that a candidate is read without a table lookup
    policy ids  per policy: id (str)
    strings     attribute and tag names and the string literals of the bytecode (str), by index,
                each text once: so an attrs/tags block (u32 count, then per entry u32 key string
                index, u32 value length, value) is searched by comparing indices

str = u32 byte length + UTF-8 bytes. A u32 list = u32 count + count u32 items.

Partner masks: a Bloom-style pre-filter of the pair index. key_bit(k) is one bit of a u64 chosen by a
hash of the index key k (`_evaluator.key_bit`). A key's principal mask is the OR of key_bit(rk) over
the resource keys rk it is paired with; its resource mask, the OR of key_bit(pk) over its principal
keys (0 when the key has no such pair). ANY_KEY's masks are in the header (u64 = lo u32, hi u32). A
request probes (pk, rk) only if pk's principal mask holds key_bit(rk) and rk's resource mask holds
key_bit(pk), so the masks prune probes and never lose a pair.
# INVARIANT: a uid's ancestor list is transitively closed, excludes the uid itself and is sorted.
# INVARIANT: every uid and entity type named by a policy, an entity or a parent is interned.
"""

MAGIC = b"AUTHZGEN"
FORMAT_VERSION = 4

HEADER_FIELDS = (
    "n_types", "types_off", "type_hash_off", "type_hash_size",
    "n_uids", "uids_off", "uid_hash_off", "uid_hash_size",
    "n_policies", "policy_ids_off",
    "all_list_off", "n_strings", "strings_off", "pair_hash_off", "pair_hash_size",
    "any_pmask_lo", "any_pmask_hi", "any_rmask_lo", "any_rmask_hi",
)
HEADER_SIZE = 8 + 4 + 4 * len(HEADER_FIELDS)

# Value tags (values in bytecode literals, entity attributes and tags).
# An extension value is stored as the call that makes it: function id (u8), argument count (u8),
# then the arguments as values; the evaluator makes the call when it reads the value.
V_FALSE, V_TRUE, V_LONG, V_STR, V_UID, V_SET, V_RECORD, V_EXT = range(8)

# Scope operators.
S_ALL, S_EQ, S_IN, S_IS, S_IS_IN, S_IN_LIST = range(6)

# Variables.
VAR_PRINCIPAL, VAR_ACTION, VAR_RESOURCE, VAR_CONTEXT = range(4)

# Expression opcodes (prefix encoding; lazy operands carry their byte length).
(OP_LIT, OP_VAR, OP_GETATTR, OP_HAS, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE,
 OP_ADD, OP_SUB, OP_MUL, OP_IN, OP_CONTAINS, OP_CONTAINS_ALL, OP_CONTAINS_ANY,
 OP_HAS_TAG, OP_GET_TAG, OP_AND, OP_OR, OP_NOT, OP_NEG, OP_IS_EMPTY, OP_IF,
 OP_LIKE, OP_IS, OP_SET, OP_RECORD, OP_CALL, OP_STR) = range(31)

BINARY_OPS = {
    "==": OP_EQ, "!=": OP_NE, "<": OP_LT, "<=": OP_LE, ">": OP_GT, ">=": OP_GE,
    "+": OP_ADD, "-": OP_SUB, "*": OP_MUL, "in": OP_IN, "contains": OP_CONTAINS,
    "containsAll": OP_CONTAINS_ALL, "containsAny": OP_CONTAINS_ANY,
    "hasTag": OP_HAS_TAG, "getTag": OP_GET_TAG,
}
UNARY_OPS = {"!": OP_NOT, "neg": OP_NEG, "isEmpty": OP_IS_EMPTY}

# Extension functions and methods: name -> (function id, arity). The receiver of a method is its first argument.
EXTENSION_FUNCTIONS = {
    "ip": (0, 1), "isIpv4": (1, 1), "isIpv6": (2, 1), "isLoopback": (3, 1), "isMulticast": (4, 1),
    "isInRange": (5, 2),
    "decimal": (6, 1), "lessThan": (7, 2), "lessThanOrEqual": (8, 2), "greaterThan": (9, 2),
    "greaterThanOrEqual": (10, 2),
    "datetime": (11, 1), "duration": (12, 1), "offset": (13, 2), "durationSince": (14, 2),
    "toDate": (15, 1), "toTime": (16, 1), "toMilliseconds": (17, 1), "toSeconds": (18, 1),
    "toMinutes": (19, 1), "toHours": (20, 1), "toDays": (21, 1),
}

# The deepest expression nesting the compiler accepts (the evaluator recurses once per level);
# cedarpy's own evaluator gives up near 1,700.
MAX_EXPR_DEPTH = 4000
# Deepest nesting of ( [ { in policy text handed to cedarpy: its parser crashes the process near 680.
MAX_TEXT_NESTING = 512

# uid flags (a uid's flags byte; a type record's byte after its name holds the KEY_IS_* bits)
UID_IS_ENTITY = 1
KEY_IS_PRINCIPAL = 2   # the key is the principal key of some (principal, resource) index pair
KEY_IS_RESOURCE = 4    # the key is the resource key of some pair

# A uid record: the byte offset of its partner masks and of its id str; the size of an ancestor key.
UID_MASKS = 5
UID_FIXED = 41
ANCESTOR_KEY = 21

# Index keys of a principal/resource scope: a uid index, TYPE_KEY | a type index, or ANY_KEY.
TYPE_KEY = 0x80000000
ANY_KEY = 0xFFFFFFFF
