"""Sign in, sign out, and the workspace a signed-in user is looking at."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
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
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from blueprints.security import limiter
from webhooks import accounts
from webhooks.models import User, db

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Sign in to continue."
login_manager.login_message_category = "info"


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    return db.session.get(User, user_id)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after sign-in."""
    if (
        target
        and not urlsplit(target).netloc
        and target.startswith("/")
        and not target.startswith("//")
    ):
        return target
    return url_for("dashboard.webhooks")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    lambda: current_app.config["WEBHOOK_LOGIN_RATE_LIMIT"],
    methods=["POST"],
    key_func=get_remote_address,
    error_message="Too many sign-in attempts. Wait a minute and try again.",
)
def login():  # type: ignore[no-untyped-def]
    """Show the sign-in form and sign the user in."""
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = accounts.check_login(db.session, form.email.data or "", form.password.data or "")
        if user is not None:
            login_user(user)
            session["workspace_id"] = user.workspaces[0].id if user.workspaces else None
            return redirect(_safe_next(request.args.get("next")))
        error = "Invalid email or password"
    elif request.method == "POST":
        error = "Invalid email or password"
    status = 401 if error else 200
    return render_template("auth/login.html", form=form, error=error), status


@bp.app_errorhandler(429)
def _too_many(exc):  # type: ignore[no-untyped-def]
    return render_template("auth/login.html", form=LoginForm(), error=exc.description), 429


@bp.post("/logout")
@login_required
def logout():  # type: ignore[no-untyped-def]
    """Sign out."""
    logout_user()
    session.pop("workspace_id", None)
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.post("/workspace")
@login_required
def switch_workspace():  # type: ignore[no-untyped-def]
    """Look at another of the user's workspaces."""
    wanted = request.form.get("workspace_id", "")
    if wanted not in {w.id for w in current_user.workspaces}:
        abort(404)
    session["workspace_id"] = wanted
    return redirect(url_for("dashboard.webhooks"))


def current_workspace():  # type: ignore[no-untyped-def]
    """The workspace this request looks at: one of the signed-in user's, or none."""
    if "workspace" not in g:
        workspaces = {w.id: w for w in current_user.workspaces}
        chosen = workspaces.get(session.get("workspace_id") or "")
        if chosen is None and workspaces:
            chosen = next(iter(workspaces.values()))
            session["workspace_id"] = chosen.id
        g.workspace = chosen
    return g.workspace
