"""Sign in, sign out, and the workspace a signed-in user is looking at."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import HTTPException
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from webhooks import accounts, services, throttle
from webhooks.models import User, Workspace, db

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Sign in to continue."
login_manager.login_message_category = "info"


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    return accounts.session_user(db.session, user_id)


def install(app: Flask) -> None:
    """Sign-in sessions and the sign-in throttle (counters in the rate limiter's Redis)."""
    login_manager.init_app(app)
    app.extensions["login_throttle"] = throttle.LoginThrottle(
        app.config.get("RATELIMIT_STORAGE_URI") or app.config["REDIS_URL"],
        per_address=app.config["WEBHOOK_LOGIN_RATE_LIMIT"],
        per_account=app.config["WEBHOOK_LOGIN_ACCOUNT_RATE_LIMIT"],
    )


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after sign-in."""
    # Browsers read a backslash as a slash and drop tabs and newlines inside a URL, so
    # `/\evil.example` and `/<TAB>/evil.example` would both leave the site.
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and not any(c == "\\" or c.isspace() or not c.isprintable() for c in target)
        and not urlsplit(target).netloc
    ):
        return target
    return url_for("dashboard.webhooks")


def client_address() -> str:
    """The caller's address, read through the proxies `WEBHOOK_TRUSTED_PROXIES` names."""
    return throttle.client_address(
        request.remote_addr,
        request.headers.getlist("X-Forwarded-For"),
        services.settings().trusted_proxies,
    )


def _throttled(form: LoginForm) -> ResponseReturnValue | None:
    """The 429 page when this attempt is over a sign-in limit, else None."""
    limits = current_app.extensions["login_throttle"]
    refused = limits.attempt(client_address(), form.email.data or "")
    if refused is None:
        return None
    which, wait = refused
    error = (
        "Too many sign-in attempts. Wait a minute and try again."
        if which == "address"
        else f"Too many sign-in attempts for this account. Try again in {wait} seconds."
    )
    page = render_template("auth/login.html", form=form, error=error)
    return page, 429, {"Retry-After": str(wait)}


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Show the sign-in form and sign the user in."""
    form = LoginForm()
    error = None
    if request.method == "POST" and (refused := _throttled(form)) is not None:
        return refused
    if form.validate_on_submit():
        email = form.email.data or ""
        user = accounts.check_login(db.session, email, form.password.data or "")
        if user is not None:
            login_user(user)
            session["workspace_id"] = user.workspaces[0].id if user.workspaces else None
            return redirect(_safe_next(request.args.get("next")))
        current_app.extensions["login_throttle"].failed(email)
        error = "Invalid email or password"
    elif request.method == "POST":
        error = "Invalid email or password"
    status = 401 if error else 200
    return render_template("auth/login.html", form=form, error=error), status


# The invitation's page carries its one-time token in the address: no cache keeps it.
NO_STORE = {"Cache-Control": "no-store"}


@bp.route("/invite/<token>", methods=["GET", "POST"])
def accept_invite(token: str) -> ResponseReturnValue:
    """An invited user chooses a password through the one-time link, and is signed in."""
    invitation = accounts.invitation(db.session, token)
    if invitation is None:
        return render_template("auth/accept_invite.html", email=None, errors={}), 404, NO_STORE
    email = db.session.get(User, invitation.user_id).email  # type: ignore[union-attr]
    errors: dict[str, str] = {}
    if request.method == "POST":
        password = request.form.get("password", "")
        if (problem := accounts.password_problem(password)) is not None:
            errors["password"] = problem
        if password != request.form.get("confirm_password", ""):
            errors["confirm_password"] = "The two passwords differ. Type the same one twice."
        if not errors:
            workspace_id = invitation.workspace_id
            user = accounts.accept_invitation(db.session, token, password)
            if user is None:  # used or expired a moment ago
                page = render_template("auth/accept_invite.html", email=None, errors={})
                return page, 404
            session.clear()
            login_user(user)
            session["workspace_id"] = workspace_id
            flash("Your password is set. Welcome!", "success")
            return redirect(url_for("dashboard.webhooks"))
    page = render_template("auth/accept_invite.html", email=email, errors=errors)
    return page, 422 if errors else 200, NO_STORE


@bp.app_errorhandler(429)
def _too_many(exc: HTTPException) -> ResponseReturnValue:
    return render_template("auth/login.html", form=LoginForm(), error=exc.description), 429


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    """Sign out, here and in every copy of this user's session cookie."""
    accounts.sign_out(db.session, current_user)
    logout_user()
    session.pop("workspace_id", None)
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.post("/workspace")
@login_required
def switch_workspace() -> ResponseReturnValue:
    """Look at another of the user's workspaces."""
    wanted = request.form.get("workspace_id", "")
    if wanted not in {w.id for w in current_user.workspaces}:
        abort(404)
    session["workspace_id"] = wanted
    return redirect(url_for("dashboard.webhooks"))


def current_workspace() -> Workspace | None:
    """The workspace this request looks at: one of the signed-in user's, or none."""
    if "workspace" not in g:
        workspaces = {w.id: w for w in current_user.workspaces}
        chosen = workspaces.get(session.get("workspace_id") or "")
        if chosen is None and workspaces:
            chosen = next(iter(workspaces.values()))
            session["workspace_id"] = chosen.id
        g.workspace = chosen
    return g.workspace
