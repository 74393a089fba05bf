"""live templates and sealed credentials

Templates become live: a webhook whose transform and headers are still the copies its template
wrote keeps only the template's settings (both are derived at send time from now on); one whose
copies were changed by hand keeps its own transform (customised) and headers. Credentials
(template API tokens and routing keys, credential-like custom headers, alert URLs) are encrypted
with WEBHOOK_SECRETS_KEY, and the logged requests of past attempts are masked.

The comparison uses the templates of the running code: a template changed since a row was
written makes that row keep its copy (it is then customised), so nothing sent changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from webhooks import credentials, crypto, templates


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BATCH = 1000

webhooks = sa.table(
    'webhooks',
    sa.column('id', sa.String),
    sa.column('template', sa.String),
    sa.column('template_params', JSON),
    sa.column('transform', JSON),
    sa.column('headers', JSON),
)
settings = sa.table('notification_settings', sa.column('workspace_id', sa.String), sa.column('alert_url', sa.Text))
notifications = sa.table('notifications', sa.column('id', sa.String), sa.column('target', sa.Text))
attempts = sa.table(
    'attempts',
    sa.column('id', sa.Integer),
    sa.column('request_headers', JSON),
    sa.column('request_body', sa.Text),
)


def _seal(values, secret):
    ring = crypto.keyring()
    return {
        k: ring.encrypt(v) if isinstance(v, str) and secret(k) and not v.startswith(crypto.PREFIX) else v
        for k, v in values.items()
    }


def _open(values, secret):
    ring = crypto.keyring()
    return {k: ring.decrypt(v) if isinstance(v, str) and secret(k) else v for k, v in values.items()}


def _made_live(row):
    """(params, transform, headers) of a webhook once its template is live."""
    params = dict(row.template_params) if row.template_params is not None else None
    transform, headers = row.transform, dict(row.headers or {})
    try:
        applied = templates.apply(row.template, params) if row.template in templates.TEMPLATES else None
    except ValueError:
        applied = None
    if applied is None:
        return params, transform, headers
    for name, value in applied['headers'].items():
        if headers.get(name) == value:
            del headers[name]  # the template's copy: derived at send time from now on
    if transform is not None and templates.follows(row.template, params, transform):
        transform = None
    elif transform is not None:
        # A customised PagerDuty body: its routing key is set from the settings at send time.
        key = transform.get('routing_key')
        if isinstance(key, str) and key and '{' not in key and params is not None:
            params['routing_key'] = key
        transform = templates.without_body_credentials(row.template, transform)
    return params, transform, headers


def _alter_text_columns(to_type):
    with op.batch_alter_table('notification_settings') as batch:
        batch.alter_column('alert_url', type_=to_type, existing_nullable=True)
    with op.batch_alter_table('notifications') as batch:
        batch.alter_column('target', type_=to_type, existing_nullable=False)


def upgrade():
    _alter_text_columns(sa.Text())
    bind = op.get_bind()
    ring = crypto.keyring()
    for row in bind.execute(sa.select(webhooks)).all():
        params, transform, headers = _made_live(row)
        bind.execute(
            webhooks.update()
            .where(webhooks.c.id == row.id)
            .values(
                template_params=sa.null() if params is None else _seal(params, credentials.PARAMS.__contains__),
                transform=sa.null() if transform is None else transform,
                headers=_seal(headers, credentials.is_credential_header),
            )
        )
    for row in bind.execute(sa.select(settings).where(settings.c.alert_url.isnot(None))).all():
        if not row.alert_url.startswith(crypto.PREFIX):
            bind.execute(
                settings.update()
                .where(settings.c.workspace_id == row.workspace_id)
                .values(alert_url=ring.encrypt(row.alert_url))
            )
    for row in bind.execute(sa.select(notifications)).all():
        if not row.target.startswith(crypto.PREFIX):
            bind.execute(
                notifications.update().where(notifications.c.id == row.id).values(target=ring.encrypt(row.target))
            )
    _mask_logged_requests(bind)


def _mask_logged_requests(bind):
    """Past attempts' logged headers and bodies with their credentials masked, in batches."""
    last = 0
    while True:
        rows = bind.execute(
            sa.select(attempts).where(attempts.c.id > last).order_by(attempts.c.id).limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        for row in rows:
            headers = credentials.mask_headers(row.request_headers)
            body = credentials.mask_body(row.request_body or '')
            if headers != (row.request_headers or {}) or body != (row.request_body or ''):
                bind.execute(
                    attempts.update()
                    .where(attempts.c.id == row.id)
                    .values(request_headers=headers, request_body=body)
                )


def downgrade():
    """Credentials in clear, and template copies written back (masked logs stay masked)."""
    bind = op.get_bind()
    ring = crypto.keyring()
    for row in bind.execute(sa.select(webhooks)).all():
        params = _open(row.template_params, credentials.PARAMS.__contains__) if row.template_params else row.template_params
        headers = _open(row.headers or {}, credentials.is_credential_header)
        transform = row.transform
        try:
            applied = templates.apply(row.template, params) if row.template in templates.TEMPLATES else None
        except ValueError:
            applied = None
        if applied is not None:
            headers = {**applied['headers'], **headers}
            transform = applied['transform'] if transform is None else transform
        bind.execute(
            webhooks.update()
            .where(webhooks.c.id == row.id)
            .values(
                template_params=sa.null() if params is None else params,
                transform=sa.null() if transform is None else transform,
                headers=headers,
            )
        )
    for row in bind.execute(sa.select(settings).where(settings.c.alert_url.isnot(None))).all():
        bind.execute(
            settings.update()
            .where(settings.c.workspace_id == row.workspace_id)
            .values(alert_url=ring.decrypt(row.alert_url))
        )
    for row in bind.execute(sa.select(notifications)).all():
        bind.execute(
            notifications.update().where(notifications.c.id == row.id).values(target=ring.decrypt(row.target))
        )
    _alter_text_columns(sa.String(length=2048))
