"""The checkpoint registry: list, describe, and (admin) delete a version."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from app.api.deps import RegistryDep, require_admin, require_api_key
from app.api.errors import HttpError
from app.api.openapi import CHECKPOINT_LINKS, errors
from app.api.schemas import CheckpointInfo
from app.core.checkpoints import VERSION_RE, InvalidName, NotFound, ReadOnly, Registry, parse_ref
from app.core.jobs.spec import NAME_PATTERN

router = APIRouter(tags=["checkpoints"])

# name@version, as the registry accepts them (names: NAME_PATTERN; versions: builtin or 1..)
REF_PATTERN = NAME_PATTERN[:-1] + "@(builtin|[1-9][0-9]{0,8})$"


def _describe(registry: Registry, name: str) -> CheckpointInfo:
    try:
        return CheckpointInfo(**registry.describe(name))
    except InvalidName as exc:
        raise HttpError(422, str(exc), "ref") from None
    except NotFound as exc:
        raise HttpError(404, str(exc)) from None


@router.get(
    "/checkpoints",
    response_model=list[CheckpointInfo],
    dependencies=[Depends(require_api_key)],
    responses={200: {"description": "the registry", "links": CHECKPOINT_LINKS}, **errors(401)},
)
def list_checkpoints(registry: RegistryDep) -> list[CheckpointInfo]:
    """Every checkpoint with its versions, configs and metadata."""
    return [_describe(registry, n) for n in registry.names()]


@router.get(
    "/checkpoints/{ref}",
    response_model=CheckpointInfo,
    dependencies=[Depends(require_api_key)],
    responses=errors(401, (404, "unknown checkpoint"), (422, "not a checkpoint name")),
)
def get_checkpoint(
    registry: RegistryDep,
    name: str = Path(
        ..., alias="ref", pattern=NAME_PATTERN, description="checkpoint name", examples=["digits"]
    ),
) -> CheckpointInfo:
    """One checkpoint's versions; 404 when unknown."""
    return _describe(registry, name)


@router.get(
    "/checkpoints/{name}/{version}/samples.png",
    response_class=Response,
    dependencies=[Depends(require_api_key)],
    responses={
        200: {"content": {"image/png": {}}, "description": "the version's sample grid"},
        **errors(401, (404, "unknown checkpoint or version, or no grid"), (422, "bad name")),
    },
)
def samples(
    registry: RegistryDep,
    name: str = Path(..., pattern=NAME_PATTERN, examples=["digits"]),
    version: str = Path(..., pattern=VERSION_RE.pattern, examples=["builtin"]),
) -> Response:
    """The sample grid a checkpoint version was published with (``samples.png``)."""
    try:
        parse_ref(name)
    except InvalidName as exc:
        raise HttpError(422, str(exc), "name") from None
    try:
        ckpt = registry.resolve(f"{name}@{version}", validate=False)
    except InvalidName as exc:
        raise HttpError(422, str(exc), "version") from None
    except NotFound as exc:
        raise HttpError(404, str(exc)) from None
    data = registry.read_file(ckpt, "samples.png")  # local or from the object store
    if data is None:
        raise HttpError(404, f"checkpoint {ckpt.ref} has no samples.png")
    # A published version never changes and its number is never reused.
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=300"})


@router.delete(
    # One path template with GET, so that a 405's Allow lists both methods as documented
    # (``ref``, not ``name``: a fuzzer must not take a listed name for a name@version).
    "/checkpoints/{ref}",
    status_code=204,
    dependencies=[Depends(require_admin)],
    tags=["admin"],
    responses={
        204: {"description": "deleted"},
        **errors(
            401,
            403,
            (404, "unknown checkpoint or version"),
            (409, "built-in checkpoints are read-only"),
            (422, "not name@version"),
        ),
    },
)
def delete_checkpoint(
    registry: RegistryDep,
    ref: str = Path(
        ..., pattern=REF_PATTERN, description="name@version", examples=["digits@builtin"]
    ),
) -> Response:
    """Delete one published version (admin). Built-ins are read-only (409)."""
    name, _, version = ref.partition("@")
    if not version:
        raise HttpError(422, "give name@version", "ref")
    try:
        registry.delete(name, version)
    except InvalidName as exc:
        raise HttpError(422, str(exc), "ref") from None
    except NotFound as exc:
        raise HttpError(404, str(exc)) from None
    except ReadOnly as exc:
        raise HttpError(409, str(exc)) from None
    return Response(status_code=204)
