"""Settings › Users: invitations with one-time links, your password, removing users."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.mailbox import Mailbox
from tests.session import Session, make_user, text
from webhooks import accounts
from webhooks.models import Invitation, User, db, utcnow

USERS = "/settings/users"
DASHBOARD = "/settings/webhooks"
LINK = re.compile(r'<code id="invite-link"[^>]*>(http[^<]+)</code>')


def invite(user: Session, email: str):  # type: ignore[no-untyped-def]
    user.get(USERS)
    return user.post(USERS, {"email": email})


def invite_link(user: Session, email: str) -> str:
    response = invite(user, email)
    assert response.status_code == 200, response.text
    found = LINK.search(response.text)
    assert found, text(response.text)
    return found.group(1).replace("http://localhost", "")


def accept(app, path: str, password: str, confirm: str | None = None):  # type: ignore[no-untyped-def]
    """Open the link in a fresh browser and choose a password; (session, response)."""
    newcomer = Session(app.test_client())
    opened = newcomer.get(path)
    data = {"password": password, "confirm_password": password if confirm is None else confirm}
    response = newcomer.client.post(path, data={**data, "csrf_token": newcomer.token})
    return newcomer, opened, response


def second_browser(app, email: str, password: str) -> Session:  # type: ignore[no-untyped-def]
    other = Session(app.test_client())
    assert other.login(email, password).status_code == 302
    assert other.get(DASHBOARD).status_code == 200
    return other


# -- invitations -------------------------------------------------------------------------------


def test_the_page_lists_the_workspaces_users_with_you_marked(app, user, workspace):
    with app.app_context():
        accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])
    make_user(app, "stranger@other.test", "Other")

    page = user.get(USERS)

    assert page.status_code == 200
    shown = text(page.text)
    assert "ops@acme.test you" in shown and "dev@acme.test" in shown
    assert "stranger@other.test" not in shown
    # A Remove button for the others, none on your own row.
    assert 'aria-label="Remove dev@acme.test"' in page.text
    assert 'aria-label="Remove ops@acme.test"' not in page.text
    assert 'href="/settings/users" aria-current="page"' in page.text


def test_an_invited_user_follows_the_link_chooses_a_password_and_is_signed_in(app, user):
    path = invite_link(user, "New.Person@Acme.test")
    assert path.startswith("/invite/")
    listed = text(user.get(USERS).text)
    assert "new.person@acme.test Invited" in listed

    newcomer, opened, response = accept(app, path, "a long new secret")

    assert opened.status_code == 200 and "new.person@acme.test" in opened.text
    assert opened.headers["Cache-Control"] == "no-store"
    assert response.status_code == 302 and response.headers["Location"].endswith(DASHBOARD)
    page = newcomer.get(DASHBOARD)
    assert page.status_code == 200 and "new.person@acme.test" in page.text
    assert "Acme" in page.text  # in the inviter's workspace
    # The password works for a sign-in of its own, and the invitation is no longer pending.
    second_browser(app, "new.person@acme.test", "a long new secret")
    assert "Invited" not in text(user.get(USERS).text)


def test_the_page_showing_the_link_is_not_cached(app, user):
    response = invite(user, "dev@acme.test")
    assert LINK.search(response.text) and response.headers["Cache-Control"] == "no-store"


def test_only_a_digest_of_the_token_is_stored(app, user):
    path = invite_link(user, "dev@acme.test")
    token = path.rsplit("/", 1)[1]
    with app.app_context():
        stored = db.session.scalars(select(Invitation)).one()
        assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in str([getattr(stored, c.key) for c in Invitation.__table__.columns])


def test_a_link_works_once(app, user):
    path = invite_link(user, "dev@acme.test")
    accept(app, path, "first choice pw")

    _, opened, again = accept(app, path, "second choice pw")

    assert opened.status_code == 404 and "This link no longer works" in opened.text
    assert again.status_code == 404
    with app.app_context():
        assert accounts.check_login(db.session, "dev@acme.test", "second choice pw") is None
        assert accounts.check_login(db.session, "dev@acme.test", "first choice pw") is not None


def test_an_expired_link_is_refused(app, user):
    path = invite_link(user, "dev@acme.test")
    with app.app_context():
        db.session.execute(update(Invitation).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()

    _, opened, response = accept(app, path, "a long new secret")

    assert opened.status_code == 404 and response.status_code == 404
    assert "This link no longer works" in response.text
    assert "dev@acme.test Invitation expired" in text(user.get(USERS).text)
    with app.app_context():
        assert accounts.check_login(db.session, "dev@acme.test", "a long new secret") is None


def test_links_last_as_long_as_the_setting_says(config, app, user):
    invite_link(user, "dev@acme.test")
    with app.app_context():
        invitation = db.session.scalars(select(Invitation)).one()
        lifetime = invitation.expires_at - invitation.created_at
        assert abs(lifetime - timedelta(days=7)) < timedelta(seconds=5)


@pytest.fixture
def short_links(config):  # type: ignore[no-untyped-def]
    config["WEBHOOK_INVITE_DAYS"] = "0.5"


def test_the_link_lifetime_is_a_setting(short_links, app, user):
    response = invite(user, "dev@acme.test")
    assert "for 0.5 days" in text(response.text)
    with app.app_context():
        invitation = db.session.scalars(select(Invitation)).one()
        lifetime = invitation.expires_at - invitation.created_at
        assert abs(lifetime - timedelta(hours=12)) < timedelta(seconds=5)


def test_an_unknown_link_is_refused(app, user):
    invite_link(user, "dev@acme.test")
    _, opened, response = accept(app, "/invite/not-a-real-token", "a long new secret")
    assert opened.status_code == 404 and response.status_code == 404


def test_a_short_or_mismatched_password_is_answered_at_its_field(app, user):
    path = invite_link(user, "dev@acme.test")

    _, _, short = accept(app, path, "short")
    _, _, differ = accept(app, path, "a long new secret", "a long new secreT")

    assert short.status_code == 422
    assert re.search(r'id="password"[^>]*aria-invalid="true"', short.text)
    assert "at least 8 characters" in text(short.text)
    assert differ.status_code == 422
    assert re.search(r'id="confirm_password"[^>]*aria-invalid="true"', differ.text)
    assert "The two passwords differ" in differ.text
    # Neither used the link up.
    _, _, good = accept(app, path, "a long new secret")
    assert good.status_code == 302


def test_inviting_an_existing_address_is_answered_at_the_field(app, user, workspace):
    make_user(app, "stranger@other.test", "Other")
    invite_link(user, "dev@acme.test")

    again = invite(user, "DEV@acme.test")
    mine = invite(user, "ops@acme.test")
    elsewhere = invite(user, "stranger@other.test")
    bad = invite(user, "not an address")

    for response in (again, mine, elsewhere, bad):
        assert response.status_code == 422
        assert re.search(r'id="invite-email"[^>]*aria-invalid="true"', response.text)
        assert 'id="invite-link"' not in response.text
    assert "dev@acme.test is already a user of this workspace" in again.text
    assert "ops@acme.test is already a user of this workspace" in mine.text
    assert "already has an account" in elsewhere.text
    assert "Enter an e-mail address" in bad.text
    with app.app_context():
        stranger = db.session.scalars(select(User).where(User.email == "stranger@other.test")).one()
        assert [w.name for w in stranger.workspaces] == ["Other"]
        assert db.session.scalars(select(Invitation)).all().__len__() == 1


def test_the_form_needs_its_csrf_token(app, user):
    user.get(USERS)
    refused = user.client.post(USERS, data={"email": "dev@acme.test"})
    assert refused.status_code == 400
    with app.app_context():
        assert db.session.scalars(select(User).where(User.email == "dev@acme.test")).first() is None


@pytest.fixture
def mailbox(config):  # type: ignore[no-untyped-def]
    box = Mailbox()
    config["SMTP_URL"] = box.url
    yield box
    box.close()


def test_with_smtp_the_link_is_also_emailed(mailbox, app, user):
    response = invite(user, "dev@acme.test")
    link = LINK.search(response.text)

    [mail] = mailbox.wait_for(1)

    assert link and "It was also e-mailed to dev@acme.test" in text(response.text)
    assert mail.recipients == ["dev@acme.test"]
    assert "Acme" in mail.subject and "ops@acme.test" in mail.body
    assert link.group(1) in mail.body


def test_without_smtp_the_page_says_to_pass_the_link_on(app, user):
    response = invite(user, "dev@acme.test")
    assert "E-mail is not configured on this server" in text(response.text)


# -- your password -----------------------------------------------------------------------------


def change(user: Session, current: str, new: str, confirm: str | None = None):  # type: ignore[no-untyped-def]
    user.get(USERS)
    data = {
        "current_password": current,
        "new_password": new,
        "confirm_password": new if confirm is None else confirm,
    }
    return user.post("/settings/password", data)


def test_a_wrong_current_password_is_answered_at_its_field(app, user):
    response = change(user, "not my password", "a brand new one")

    assert response.status_code == 422
    assert re.search(r'id="current_password"[^>]*aria-invalid="true"', response.text)
    assert "That is not your current password" in response.text
    with app.app_context():
        assert accounts.check_login(db.session, "ops@acme.test", "correct horse") is not None


def test_a_mismatched_or_short_new_password_is_answered_at_its_field(app, user):
    differ = change(user, "correct horse", "a brand new one", "a brand new two")
    short = change(user, "correct horse", "tiny")

    assert differ.status_code == 422
    assert re.search(r'id="confirm_password"[^>]*aria-invalid="true"', differ.text)
    assert "The two new passwords differ" in differ.text
    assert not re.search(r'id="current_password"[^>]*aria-invalid', differ.text)
    assert short.status_code == 422
    assert re.search(r'id="new_password"[^>]*aria-invalid="true"', short.text)
    with app.app_context():
        assert accounts.check_login(db.session, "ops@acme.test", "correct horse") is not None


def test_changing_your_password_ends_your_other_sessions_but_not_this_one(app, user):
    laptop = second_browser(app, "ops@acme.test", "correct horse")

    response = change(user, "correct horse", "a brand new one")

    assert response.status_code == 303 and response.headers["Location"].endswith(USERS)
    page = user.get(USERS)
    assert page.status_code == 200 and "Your password was changed" in page.text
    assert laptop.get(DASHBOARD).status_code == 302  # sent to sign in
    with app.app_context():
        assert accounts.check_login(db.session, "ops@acme.test", "correct horse") is None
        assert accounts.check_login(db.session, "ops@acme.test", "a brand new one") is not None


# -- removing users ----------------------------------------------------------------------------


def remove(user: Session, user_id: str):  # type: ignore[no-untyped-def]
    user.get(USERS)
    return user.post(f"/settings/users/{user_id}/remove")


def user_id(app, email: str) -> str:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalars(select(User.id).where(User.email == email)).one()


def test_removing_a_user_signs_them_out_at_once(app, user, workspace):
    with app.app_context():
        accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])
    dev = second_browser(app, "dev@acme.test", "correct horse")

    response = remove(user, user_id(app, "dev@acme.test"))

    assert response.status_code == 303
    page = text(user.get(USERS).text)
    assert "dev@acme.test was removed" in page
    assert "dev@acme.test" not in page.replace("dev@acme.test was removed", "")
    assert dev.get(DASHBOARD).status_code == 302
    assert dev.login("dev@acme.test", "correct horse").status_code == 401


def test_removing_a_user_of_two_workspaces_keeps_them_in_the_other(app, user, workspace):
    other_id, _ = make_user(app, "dev@acme.test", "Side project")
    with app.app_context():
        accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])
    dev = second_browser(app, "dev@acme.test", "correct horse")

    assert remove(user, user_id(app, "dev@acme.test")).status_code == 303

    assert dev.get(DASHBOARD).status_code == 302  # signed out everywhere at once
    with app.app_context():
        dev_user = db.session.scalars(select(User).where(User.email == "dev@acme.test")).one()
        assert [w.id for w in dev_user.workspaces] == [other_id]


def test_removing_a_pending_invitee_voids_their_link(app, user):
    path = invite_link(user, "dev@acme.test")
    assert remove(user, user_id(app, "dev@acme.test")).status_code == 303
    _, opened, response = accept(app, path, "a long new secret")
    assert opened.status_code == 404 and response.status_code == 404


def test_you_cannot_remove_yourself(app, user, workspace):
    with app.app_context():
        accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])

    response = remove(user, user_id(app, "ops@acme.test"))

    assert response.status_code == 303
    assert "You cannot remove yourself" in user.get(USERS).text
    assert user.get(DASHBOARD).status_code == 200
    with app.app_context():
        assert accounts.check_login(db.session, "ops@acme.test", "correct horse") is not None


def test_the_last_user_of_a_workspace_cannot_be_removed(app, workspace):
    with app.app_context():
        ops = accounts.create_user(db.session, "ops@acme.test", "correct horse", workspace["id"])
        with pytest.raises(accounts.AccountError, match="yourself"):
            accounts.remove_user(db.session, workspace["id"], ops.id, ops.id)
        dev = accounts.create_user(db.session, "dev@acme.test", "correct horse", workspace["id"])
        assert accounts.remove_user(db.session, workspace["id"], dev.id, ops.id)
        # Only ops is left; even a caller that skipped the self check is refused.
        with pytest.raises(accounts.AccountError, match="last user"):
            accounts.remove_user(db.session, workspace["id"], ops.id, "usr_someone")
        assert accounts.member(db.session, workspace["id"], ops.id) is not None


def test_another_workspaces_users_can_be_neither_seen_nor_removed(app, user):
    make_user(app, "stranger@other.test", "Other")
    stranger = second_browser(app, "stranger@other.test", "correct horse")
    stranger_id = user_id(app, "stranger@other.test")

    assert "stranger@other.test" not in user.get(USERS).text
    response = remove(user, stranger_id)

    assert response.status_code == 404
    assert stranger.get(DASHBOARD).status_code == 200
    with app.app_context():
        assert db.session.get(User, stranger_id) is not None
    # Nor the other way round.
    assert remove(stranger, user_id(app, "ops@acme.test")).status_code == 404
    assert user.get(DASHBOARD).status_code == 200


def test_signed_out_the_pages_send_you_to_sign_in(client):
    assert client.get(USERS).status_code == 302
    assert client.post("/settings/password").status_code in (302, 400)
