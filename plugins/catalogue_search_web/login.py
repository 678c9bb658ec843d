"""A logged-out visit to the page goes to Airflow's login, and comes back to the same URL afterwards.

Every route of the app answers 401 without a login (Airflow's own check); for
the JSON API that is right, but a person who opens a shared link to the page
would see `{"detail":"Not authenticated"}`. This middleware turns that one
answer, a 401 to a browser's GET of the page, into a redirect to Airflow's
`/api/v2/auth/login?next=<the page's URL>`, which sends the browser to the
auth manager's login form (simple or FAB) and, after it, back to `next`,
query string and all. Requests that do not ask for HTML (the API, scripts,
`curl`) keep their 401; a 403 (logged in, not allowed) is not a login problem
and is left alone.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

AIRFLOW_LOGIN = "/api/v2/auth/login"


def login_url(scope: Scope, url_prefix: str) -> str:
    """Airflow's login route with `next` = the requested page (path and query, same origin)."""
    root = scope.get("root_path", "")
    airflow_root = root[: -len(url_prefix)] if url_prefix and root.endswith(url_prefix) else ""
    path = scope["path"] if scope["path"].startswith(root) else root + scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    target = path + (f"?{query}" if query else "")
    return f"{airflow_root}{AIRFLOW_LOGIN}?next={quote(target, safe='/')}"


class LoginRedirect:
    """ASGI middleware: a 401 to a browser's GET of one of `pages` becomes a redirect to the login."""

    def __init__(self, app: ASGIApp, url_prefix: str, pages: tuple[str, ...] = ("", "/")) -> None:
        self.app, self.url_prefix, self.pages = app, url_prefix, pages

    def _is_page_request(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET":
            return False
        root, path = scope.get("root_path", ""), scope["path"]
        relative = path[len(root) :] if root and path.startswith(root) else path
        return relative in self.pages and "text/html" in Headers(scope=scope).get("accept", "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._is_page_request(scope):
            await self.app(scope, receive, send)
            return
        redirected = False

        async def send_or_redirect(message: Message) -> None:
            nonlocal redirected
            if message["type"] == "http.response.start" and message["status"] == 401:
                redirected = True
                response = RedirectResponse(login_url(scope, self.url_prefix), status_code=307)
                response.headers["Cache-Control"] = "no-store"
                await response(scope, receive, send)
                return
            if not redirected:  # the 401's body is dropped with it
                await send(message)

        await self.app(scope, receive, send_or_redirect)
