"""Request and response bodies of the HTTP API (pydantic), as documented in docs/studio-api.md.

Bounds here are the API's own (sizes of strings and lists, counts per request); whether a value
suits the chosen model (a sampler name, a step count, a family option) is the library's check,
which answers 422 naming the field just as the CLI names the flag.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path as PathParam

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
MAX_ID = 2**53  # ids fit every database integer (and a JavaScript number)

# Path parameters: ids in range, so an absurd number is a 422, not a database overflow.
Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Step = Annotated[int, PathParam(ge=0, le=MAX_ID)]
Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    ok: bool
    version: str
    accounts: bool


class LoginBody(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: int
    username: str
    role: Literal["admin", "user"]
    implicit: bool = False  # the local admin of a studio without accounts

    @classmethod
    def of(cls, user: Any, implicit: bool = False) -> "UserOut":
        return cls(id=user.id, username=user.username, role=user.role, implicit=implicit)


class UserCreate(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
    role: Literal["admin", "user"] = "user"


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=128)


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    created: float
    last_used: float | None = None
    revoked: float | None = None

    @classmethod
    def of(cls, key: Any) -> "ApiKeyOut":
        return cls(id=key.id, name=key.name, prefix=key.prefix, created=key.created,
                   last_used=key.last_used, revoked=key.revoked)


class ApiKeyCreated(ApiKeyOut):
    key: str


OptionValue = int | float | str | bool | None


class GenerateBody(Strict):
    """A generation request (``limner.generation.request.GenerationRequest``) naming a model."""

    model: str = Field(min_length=1, max_length=256, description="a run name from GET /api/models")
    prompt: str | None = Field(None, max_length=2000)
    negative: str | None = Field(None, max_length=2000)
    label: int | str | None = Field(None, description="class id or name (class-conditioned models)")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="-1 or null = random (fixed at submit)")
    num: int = Field(1, ge=1, le=64)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg: float | None = Field(None, ge=0, le=100)
    sampler: str | None = Field(None, max_length=64)
    truncation: float | None = Field(None, ge=0, le=10)
    sigma_max: float | None = Field(None, gt=0, le=1000)
    step: int | Literal["best"] | None = Field(None, description="checkpoint step; null = newest")
    precision: Literal["fp32", "bf16"] = "fp32"
    options: dict[str, OptionValue] = Field(default_factory=dict, max_length=32,
                                            description="further options the model's family declares")
    init_image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                                      description="start image: an id from POST /api/uploads (image-to-image, "
                                                  "models declaring img2img)")
    mask_image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                                      description="inpainting mask (white = regenerate, black = keep): an id from "
                                                  "POST /api/uploads; needs init_image_id (models declaring inpaint)")
    strength: float | None = Field(None, ge=0, le=1, description="how much of the schedule runs from the start "
                                                                 "image: 0 keeps it, 1 ignores it (default 0.6; "
                                                                 "1 with a mask)")
    resample: int | None = Field(None, ge=1, le=20, description="inpainting: RePaint resampling passes per sampler "
                                                                "step, for coherent borders (default 3); needs "
                                                                "mask_image_id")


class JobOut(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    request: dict[str, Any] | None = None
    run: str | None = None


class JobAccepted(BaseModel):
    job: JobOut


class ImageOut(BaseModel):
    id: int
    prompt: str | None = None
    negative: str | None = None
    model: str | None = None
    family: str | None = None
    seed: int | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    rating: int | None = None
    tags: list[str] = []
    created: float | None = None
    owner_id: int | None = None
    parent_id: int | None = None
    deleted: bool = False
    missing: bool = False
    thumb_url: str
    file_url: str
    score: float | None = None


class ImageDetail(ImageOut):
    record: dict[str, Any] | None = None
    versions: list[int] = []


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None = None


class ImagePatch(Strict):
    rating: int | None = Field(None, ge=0, le=5)
    tags: list[str] | None = Field(None, max_length=64)


class UploadOut(BaseModel):
    id: str
    width: int
    height: int


class BoardCreate(Strict):
    name: str = Field(min_length=1, max_length=256)


class BoardOut(BaseModel):
    id: int
    name: str
    owner_id: int
    created: float
    role: str


class BoardImageAdd(Strict):
    image_id: int = Field(ge=1, le=2**62)


class BoardMemberAdd(Strict):
    username: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "editor"] = "viewer"


class OptionOut(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelOut(BaseModel):
    name: str
    run_id: str | None = Field(None, description="the id generation records carry: an image's `model`, and "
                                                 "GET /api/images?model=RUN_ID finds the images made with it")
    kind: Literal["run", "bundled"]
    family: str | None = None
    cond: str | None = None
    resolution: int | None = None
    step: int | None = None
    summary: str | None = None
    description: str | None = None
    options: dict[str, Any] = {}
    capabilities: list[str] = []


class PresetOut(BaseModel):
    name: str
    description: str = ""


class NeedOut(BaseModel):
    option: str = Field(description="the key in TrainBody.needs (and `limner train --OPTION`)")
    family: str = Field(description="the family the needed run must be")
    cond: str | None = Field(None, description="the condition the needed run must have been trained with")
    help: str
    train_args: list[str] = []


class FamilyOut(BaseModel):
    name: str
    summary: str
    default: bool = False
    presets: list[PresetOut]
    default_preset: str
    conditions: list[str]
    needs: list[NeedOut] = []
    options: list[dict[str, Any]] = []
    capabilities: list[str] = []


class RunOut(BaseModel):
    name: str
    run_id: str | None = None
    family: str | None = None
    cond: str | None = None
    resolution: int | None = None
    step: int | None = None
    created: float | None = None
    state: str
    error: str | None = None  # why an ``unreadable`` run cannot be used


class TrainBody(Strict):
    data: str | None = Field(None, min_length=1, max_length=256, description="a dataset name from GET /api/datasets "
                                                                           "(or give data_path)")
    data_path: str | None = Field(None, min_length=1, max_length=4096,
                                  description="admins (or a studio without accounts): an absolute dataset folder on "
                                              "the studio's machine, inside one of GET /api/datasets/roots")
    name: str = Name
    family: str | None = Field(None, max_length=64)
    preset: str = Field("small", max_length=64)
    steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int | None = Field(None, ge=1, le=4096)
    resolution: int = Field(32, ge=8, le=1024)
    cond: Literal["text", "class", "none"] | None = None
    set: dict[str, OptionValue | list[Any] | dict[str, Any]] = Field(
        default_factory=dict, max_length=64, description="config overrides, as `limner train --set KEY=VALUE`")
    needs: dict[str, str] = Field(default_factory=dict, max_length=8,
                                  description="the runs the family is built on, by the option GET /api/families "
                                              "names (e.g. {\"vae\": \"my-vae\"}): names of your runs")


class ResumeBody(Strict):
    steps: int = Field(ge=1, le=10_000_000)


class EvalBody(Strict):
    run: str = Name
    num: int = Field(200, ge=10, le=50_000)


class DataCheckBody(Strict):
    path: str = Field(min_length=1, max_length=4096, description="an absolute folder (or .npz/IDX file) inside "
                                                                  "one of GET /api/datasets/roots")
    resolution: int | None = Field(None, ge=8, le=1024, description="also count images smaller than this")


class SkippedOut(BaseModel):
    path: str
    reason: str


class DataCheckOut(BaseModel):
    """``limner data check``'s report (``limner.data.check.check_dataset``)."""

    path: str
    kind: str
    images: int = Field(description="usable images")
    total: int
    skipped: list[SkippedOut] = []
    skipped_count: int = 0
    captioned: int = 0
    has_captions: bool = False
    classes: dict[str, int] | None = None
    unlisted: int = 0
    smaller: int = 0


class DataRootsOut(BaseModel):
    allowed: bool = Field(description="whether you may train from a folder path (admins, or no accounts)")
    roots: list[str] = []


class DatasetOut(BaseModel):
    name: str
    images: int
    skipped: list[dict[str, str]] = []
