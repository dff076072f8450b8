"""The checkpoint registry: list, describe, and (admin) delete a version."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from ..deps import get_registry, require_admin, require_api_key
from ..jobs import ApiError
from ..registry import InvalidName, NotFound, ReadOnly, Registry, parse_ref
from ..schemas import CheckpointInfo

router = APIRouter(tags=["checkpoints"])


def _describe(registry: Registry, name: str) -> CheckpointInfo:
    try:
        return CheckpointInfo(**registry.describe(name))
    except InvalidName as exc:
        raise ApiError(422, str(exc), "name") from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None


@router.get(
    "/checkpoints", response_model=list[CheckpointInfo], dependencies=[Depends(require_api_key)]
)
def list_checkpoints(registry: Registry = Depends(get_registry)) -> list[CheckpointInfo]:
    """Every checkpoint with its versions, configs and metadata."""
    return [_describe(registry, n) for n in registry.names()]


@router.get(
    "/checkpoints/{name}", response_model=CheckpointInfo, dependencies=[Depends(require_api_key)]
)
def get_checkpoint(
    name: str = Path(..., max_length=64), registry: Registry = Depends(get_registry)
) -> CheckpointInfo:
    """One checkpoint's versions; 404 when unknown."""
    return _describe(registry, name)


@router.get(
    "/checkpoints/{name}/{version}/samples.png",
    response_class=Response,
    dependencies=[Depends(require_api_key)],
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such grid"}},
)
def samples(
    name: str = Path(..., max_length=64),
    version: str = Path(..., max_length=16),
    registry: Registry = Depends(get_registry),
) -> Response:
    """The sample grid a checkpoint version was published with (``samples.png``)."""
    try:
        parse_ref(name)
    except InvalidName as exc:
        raise ApiError(422, str(exc), "name") from None
    try:
        ckpt = registry.resolve(f"{name}@{version}", validate=False)
    except InvalidName as exc:
        raise ApiError(422, str(exc), "version") from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    path = ckpt.path / "samples.png"
    try:
        data = path.read_bytes() if path.is_file() else None
    except OSError:
        data = None
    if data is None:
        raise ApiError(404, f"checkpoint {ckpt.ref} has no samples.png")
    # A published version never changes and its number is never reused.
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=300"})


@router.delete(
    "/checkpoints/{ref}", status_code=204, dependencies=[Depends(require_admin)], tags=["admin"]
)
def delete_checkpoint(
    ref: str = Path(..., max_length=140, description="name@version"),
    registry: Registry = Depends(get_registry),
) -> Response:
    """Delete one published version (admin). Built-ins are read-only (409)."""
    name, _, version = ref.partition("@")
    if not version:
        raise ApiError(422, "give name@version", "ref")
    try:
        registry.delete(name, version)
    except InvalidName as exc:
        raise ApiError(422, str(exc), "ref") from None
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except ReadOnly as exc:
        raise ApiError(409, str(exc)) from None
    return Response(status_code=204)
