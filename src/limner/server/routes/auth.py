"""Login, logout, the current user, API keys and (for admins) users."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from limner.server import accounts
from limner.server.deps import SESSION_COOKIE, AdminDep, StudioDep, UserDep
from limner.server.errors import ApiError
from limner.server.schemas import Id, ApiKeyCreated, ApiKeyOut, KeyCreate, LoginBody, UserCreate, UserOut

router = APIRouter(prefix="/api", tags=["auth"])


@router.post("/auth/login", response_model=UserOut)
def login(body: LoginBody, request: Request, response: Response, studio: StudioDep) -> UserOut:
    """Password login: sets the ``limner_session`` cookie (HttpOnly, SameSite=Strict).
    Failed tries are limited per client address (429 with Retry-After past the limit)."""
    from limner.store.errors import AuthError

    client = request.client.host if request.client else "?"
    limiter = studio.login_limiter
    wait = limiter.retry_after(client)
    if wait:
        raise ApiError(429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)})
    try:
        user = studio.store.authenticate(body.username, body.password)
    except AuthError:
        limiter.hit(client)
        raise ApiError(401, "wrong username or password") from None
    token = studio.store.create_session(user, seconds=studio.settings.session_days * 86400)
    response.set_cookie(SESSION_COOKIE, token, max_age=studio.settings.session_days * 86400, httponly=True,
                        samesite="strict", secure=_secure(studio, request), path="/")
    return UserOut.of(user)


@router.post("/auth/logout", status_code=204)
def logout(request: Request, response: Response, studio: StudioDep) -> Response:
    """End this browser's session (idempotent)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        studio.store.end_session(token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/me", response_model=UserOut)
def me(user: UserDep, studio: StudioDep) -> UserOut:
    """Who the request acts as (the implicit ``local`` admin while no account exists)."""
    return UserOut.of(user, implicit=not accounts.accounts_on(studio))


@router.get("/keys", response_model=list[ApiKeyOut])
def list_keys(user: UserDep, studio: StudioDep) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(k) for k in studio.store.list_api_keys(user)]


@router.post("/keys", response_model=ApiKeyCreated, status_code=201)
def create_key(body: KeyCreate, user: UserDep, studio: StudioDep) -> ApiKeyCreated:
    """A new API key; ``key`` is in this answer only (stored hashed)."""
    record, key = studio.store.create_api_key(user, body.name)
    return ApiKeyCreated(**ApiKeyOut.of(record).model_dump(), key=key)


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: Id, user: UserDep, studio: StudioDep) -> Response:
    """Revoke a key (idempotent)."""
    studio.store.revoke_api_key(user, key_id)
    return Response(status_code=204)


@router.get("/users", response_model=list[UserOut])
def list_users(admin: AdminDep, studio: StudioDep) -> list[UserOut]:
    return [UserOut.of(u) for u in studio.store.list_users(admin)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserCreate, admin: AdminDep, studio: StudioDep) -> UserOut:
    """Create an account (admins only). The first account with a password turns accounts on
    (the implicit local admin stops working), so it must be an admin; the images, boards,
    jobs, run folders and datasets the local admin made move to that first admin."""
    if body.role != "admin" and not accounts.accounts_on(studio, fresh=True):
        raise ApiError(422, "the first account must be an admin (it turns accounts on)", "role")
    user, _ = accounts.add_user(studio.store, body.username, body.password, body.role, studio.settings.home)
    accounts.forget(studio)
    return UserOut.of(user)


def _secure(studio, request: Request) -> bool:
    if studio.settings.secure_cookies is not None:
        return studio.settings.secure_cookies
    return request.url.scheme == "https"
