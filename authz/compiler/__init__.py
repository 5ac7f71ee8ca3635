"""The compiler: Cedar sources and entity files -> one new generation of the LMDB policy index."""

import dataclasses
import os
import re
import sys

from ..errors import CompileError
from .digest import SourceDigest
from .encode import Symbols
from .entities import load_entities
from .layout import MAX_EXPR_DEPTH
from .lower import PolicyLowering
from .source import parse_alone, parse_policy_text
from .verify import verify_policies
from ..engine.index import publish
from .writer import build_generation, parents_table

# A shape some of whose literals are not patchable holes: each such policy is lowered on its own.
_SHAPE_FALLBACK = object()


def _template_of(lowering, source):
    """The shape's Template, or _SHAPE_FALLBACK if some literal of the shape has no hole to go into."""
    template = lowering.lower(source.est, source.where, source.placeholders)
    # Scope uids are holes too, so the holes and the annotated id account for every patched literal.
    used = {arg if kind else arg[1] for _, kind, arg in template.holes}
    if type(template.policy_id) is int:
        used.add(template.policy_id)
    used.update(value for _, value in template.annotations if type(value) is int)
    return template if used == set(range(len(source.literals))) else _SHAPE_FALLBACK


def is_entity_file(name):
    return name == "entities.json" or name.endswith(".entities.json")


def shown_path(path, cwd):
    """`path` as the user can open it: relative to `cwd` when it is under it, else absolute (as given
    when `cwd` is None)."""
    if cwd is None:
        return path
    absolute = os.path.join(cwd, path)
    relative = os.path.relpath(absolute, cwd)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return os.path.normpath(absolute)
    return relative


def find_sources(srcs):
    """(policy files as (path, shown, name), entity files as (path, shown)); folders are searched recursively.

    `shown` is the path in messages (see shown_path); `name`, a policy file's name in policy ids: its path
    relative to the folder given, or its base name when the file itself was given."""
    policies, entities = _find_sources(srcs)
    return policies, [(path, shown) for path, shown, _ in entities]


def _find_sources(srcs):
    """find_sources, with each entity file's `name` too (as a policy file's: the policy set's digest)."""
    policies, entities, problems = [], [], []
    try:
        cwd = os.getcwd()
    except OSError:  # the current directory was removed: paths are shown as given
        cwd = None
    for src in srcs:
        src = os.fspath(src)
        if os.path.isdir(src):
            for root, dirs, files in os.walk(src):
                # Hidden folders are skipped: a Kubernetes ConfigMap mount keeps a `..<timestamp>` copy of every file.
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    path = os.path.join(root, name)
                    if name.endswith(".cedar"):
                        policies.append((path, shown_path(path, cwd), os.path.relpath(path, src)))
                    elif is_entity_file(name):
                        entities.append((path, shown_path(path, cwd), os.path.relpath(path, src)))
        elif os.path.isfile(src):
            name = os.path.basename(src)
            if name.endswith(".cedar"):
                policies.append((src, shown_path(src, cwd), name))
            elif is_entity_file(name):
                entities.append((src, shown_path(src, cwd), name))
            else:
                problems.append(f"{src}: not a policy (`.cedar`) or entity (`*.entities.json`) file")
        else:
            problems.append(f"{src}: no such file or folder")
    if problems:
        raise CompileError(problems)
    return policies, entities


def compile_generation(srcs):
    """The generation blob for `srcs`; raises CompileError listing every problem found."""
    return compile_parts(srcs)[0]


def compile_parts(srcs, entity_overlay=None):
    """(generation blob, {policy id: {annotation: value}} of the policies with annotations besides @id)
    for `srcs`; raises CompileError listing every problem found. `entity_overlay`: see load_entities."""
    return compile_all(srcs, entity_overlay)[:2]


# `@mode("...")` of a policy: enforced (the default) or shadow (docs/policy-tooling.md, "Shadow policies").
MODES = ("enforce", "shadow")
_MODE_AT = re.compile(r"@\s*mode\b")


def policy_mode(source, annotations):
    """The policy's @mode: "enforce" (also without one) or "shadow"; CompileError at the annotation otherwise."""
    mode = annotations.get("mode", "enforce") if annotations else "enforce"
    if mode in MODES:
        return mode
    where = source.where
    found = _MODE_AT.search(source.text)
    if found is not None:
        before = source.text[:found.start()]
        line = source.line + before.count("\n")
        col = found.start() - before.rfind("\n") if "\n" in before else source.col + found.start()
        where = f"{source.file}:{line}:{col}"
    shown = "no value" if mode is None else f'"{mode}"'
    raise CompileError([f'{where}: @mode must be "enforce" or "shadow", not {shown}'])


def compile_all(srcs, entity_overlay=None, shadow=False):
    """compile_parts and, third, the entities' direct parents (writer.parents_table), which
    Engine.check's request entities need; published beside the generation.

    Policies annotated `@mode("shadow")` are left out (the enforced set), or with `shadow` kept (the
    shadow set: what the policies would decide if the shadow ones were enforced)."""
    return _compile(srcs, entity_overlay, shadow)[:3]


def _compile(srcs, entity_overlay, shadow):
    """compile_all, fourth the number of @mode("shadow") policies among the sources, and fifth the policy
    set's content digest (digest.py)."""
    shadowed = 0
    policy_files, entity_files = _find_sources(srcs)
    digest = SourceDigest()
    symbols = Symbols()
    lowering = PolicyLowering(symbols)
    diagnostics, records, ids, seen, compiled, annotations = [], [], [], {}, [], {}
    # Templates are keyed by the text cedarpy parsed (and whether its literals are placeholders), which
    # determines the shape's EST: never by the EST object's identity, which a later file's parse reuses.
    templates = {}
    for path, shown, name in policy_files:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            digest.add(name, raw)
            text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
        except (OSError, UnicodeDecodeError) as err:
            diagnostics.append(f"{shown}:1:1: cannot read policy file: {err}")
            continue
        try:
            sources = parse_policy_text(text, shown, name)
        except CompileError as err:
            diagnostics.extend(err.diagnostics)
            continue
        for source in sources:
            try:
                shape_key = (source.shape, source.placeholders)
                template = templates.get(shape_key)
                if template is None:
                    template = templates[shape_key] = _template_of(lowering, source)
                if template is _SHAPE_FALLBACK:
                    # Parsed again on its own, literals in place: that parse is the one it is checked against.
                    source = dataclasses.replace(source, est=parse_alone(source), literals=(), placeholders=False)
                    template = lowering.lower(source.est, source.where, placeholders=False)
                try:
                    record, keys, annotated = template.instantiate(source.literals, symbols)
                except CompileError as err:
                    raise CompileError([f"{source.where}: {d}" for d in err.diagnostics]) from None
                policy_annotations = template.annotations_of(source.literals)
                mode = policy_mode(source, policy_annotations)
            except CompileError as err:
                diagnostics.extend(err.diagnostics)
                continue
            policy_id = annotated if annotated is not None else f"{name}:{source.index}"
            if policy_id in seen:
                diagnostics.append(f"{source.where}: duplicate policy id `{policy_id}` (first at {seen[policy_id]})")
            seen[policy_id] = source.where
            if mode == "shadow":
                shadowed += 1
                if not shadow:  # compiled (its errors are reported), never enforced
                    continue
            records.append((record, keys))
            compiled.append((source, (record, keys, policy_id, policy_annotations)))
            if policy_annotations:
                annotations[policy_id] = policy_annotations
            ids.append(policy_id)
    try:
        entity_names = {path: name for path, _, name in entity_files}
        entities = load_entities([(path, shown) for path, shown, _ in entity_files], entity_overlay,
                                 lambda path, raw: digest.add(entity_names[path], raw))
    except CompileError as err:
        diagnostics.extend(err.diagnostics)
        entities = {}
    if diagnostics:
        raise CompileError(diagnostics)
    verify_policies([c[0] for c in compiled], [c[1] for c in compiled], symbols)
    blob = build_generation(records, ids, entities, symbols)
    if entity_overlay is not None:
        digest.add_overlay(*entity_overlay)
    return blob, annotations, parents_table(entities, symbols), shadowed, digest.hexdigest()


# Deeply nested policies (long `+` chains, nested sets) become deeply nested JSON and recursion in
# the lowering; the limit is raised while compiling so that what cedarpy parses, authz compiles.
_COMPILE_RECURSION_LIMIT = 4 * MAX_EXPR_DEPTH + 1000


def _compiled(srcs, entity_overlay, shadow):
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _COMPILE_RECURSION_LIMIT))
    try:
        return _compile(srcs, entity_overlay, shadow)
    except RecursionError:
        raise CompileError(["policies nested too deeply to compile"]) from None
    finally:
        sys.setrecursionlimit(previous)


def compile_sources(srcs, db, entity_overlay=None, shadow=False):
    """Compiles `srcs` and publishes the result as the index's new current generation; returns its number.
    `entity_overlay`: (name, entity list) replacing the files' entities of the same uids (load_entities).
    `shadow`: compile the shadow set (@mode("shadow") policies kept; see compile_all)."""
    if isinstance(srcs, (str, os.PathLike)):
        srcs = [srcs]
    blob, annotations, parents, _, digest = _compiled(srcs, entity_overlay, shadow)
    return publish(os.fspath(db), blob, annotations, parents, digest)


def compile_with_shadow(srcs, db, shadow_db):
    """compile_sources(srcs, db), then, when some policy is @mode("shadow"), the shadow set into
    `shadow_db`; returns (generation, shadow), shadow being the shadow set's generation, None when no
    policy is @mode("shadow"), or the CompileError that stopped the shadow set (the enforced set is
    published either way)."""
    if isinstance(srcs, (str, os.PathLike)):
        srcs = [srcs]
    blob, annotations, parents, shadowed, digest = _compiled(srcs, None, False)
    generation = publish(os.fspath(db), blob, annotations, parents, digest)
    if not shadowed:
        return generation, None
    try:
        blob, annotations, parents, _, digest = _compiled(srcs, None, True)
    except CompileError as e:
        return generation, e
    return generation, publish(os.fspath(shadow_db), blob, annotations, parents, digest)
