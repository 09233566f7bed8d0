"""Render a kustomization offline and validate every object against the Kubernetes schemas.

No kustomize binary installs from the package registries, so this renders the subset of kustomize that
deploy/k8s uses, with kustomize's semantics, and refuses any other field (a feature it does not know
would otherwise be silently dropped): ``resources`` (files and directories), ``namespace``, ``labels``
(``pairs``, metadata only), ``images`` (``newName``, ``newTag``), ``replicas`` and ``patches`` (strategic
merge patch files matched by kind and name; lists of named items merge by ``name``, other lists
replace). ``kubectl kustomize deploy/k8s/overlays/production`` renders the same objects.

    python deploy/k8s/render.py deploy/k8s/overlays/production            # print the YAML
    python deploy/k8s/render.py --check deploy/k8s/base deploy/k8s/overlays/production   # make lint

Validation uses kubernetes-validate's bundled schemas (strict: unknown fields fail), no network.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUBERNETES_VERSION = "1.33.0"  # the oldest minor release still supported upstream when this was written
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
Obj = dict[str, Any]


class RenderError(ValueError):
    pass


def _load_all(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[Obj]:
    """The objects of the kustomization in `directory`, in resource order."""
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields this renderer does not implement: {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_all(path)
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise RenderError(f"{kfile}: only `patches: - path: FILE` (a strategic merge patch) is implemented")
        for p in _load_all(directory / patch["path"]):
            _apply_patch(objects, p, kfile)
    for rule in k.get("replicas", []):
        _find(objects, None, rule["name"], kfile, kinds=("Deployment", "StatefulSet", "ReplicaSet"))["spec"][
            "replicas"
        ] = rule["count"]
    for image in k.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(container["image"], image)
    for label in k.get("labels", []):
        if set(label) - {"pairs"}:
            raise RenderError(f"{kfile}: labels: only `pairs` (metadata labels) is implemented")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in k:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objects


def _find(objects: list[Obj], kind: str | None, name: str, where: Path, kinds: tuple[str, ...] = ()) -> Obj:
    hits = [
        o
        for o in objects
        if o["metadata"]["name"] == name and (o["kind"] == kind if kind else not kinds or o["kind"] in kinds)
    ]
    if len(hits) != 1:
        raise RenderError(f"{where}: {kind or '/'.join(kinds)} {name!r} matches {len(hits)} objects, not 1")
    return hits[0]


def _apply_patch(objects: list[Obj], patch: Obj, where: Path) -> None:
    target = _find(objects, patch["kind"], patch["metadata"]["name"], where)
    merged = merge(target, patch)
    target.clear()
    target.update(merged)


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for the built-in kinds: maps merge key by key, lists of maps
    that all have a `name` merge by name (containers, env, ports, volumes), any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out_list = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _retag(image: str, rule: Obj) -> str:
    name, _, tag = image.partition("@")[0].rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    if name != rule["name"]:
        return image
    return f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"


def validate(objects: list[Obj], version: str = KUBERNETES_VERSION) -> list[str]:
    """One message per object the schemas refuse (strict: unknown fields too); empty when all pass."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render a kustomization offline; --check validates it")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="validate against the Kubernetes schemas")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    failed = False
    for directory in args.directories:
        try:
            objects = render(directory)
        except (RenderError, OSError, KeyError, yaml.YAMLError) as exc:
            print(f"{directory}: {exc}", file=sys.stderr)
            failed = True
            continue
        if not args.check:
            sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
            continue
        problems = validate(objects, args.kubernetes_version)
        for p in problems:
            print(f"{directory}: {p}", file=sys.stderr)
        failed = failed or bool(problems)
        if not problems:
            print(f"{directory}: {len(objects)} objects valid for Kubernetes {args.kubernetes_version}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
