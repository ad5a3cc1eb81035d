"""A team's MLflow tracking server with logins (MLflow's ``basic-auth`` app, docs/scaling.md "A team tracking server").

The client's credentials come only from where MLflow itself reads them: ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` or ``~/.mlflow/credentials``. Never from the config: every run logs its
config (params, ``config.yaml``), so a password there would be readable by everyone who can read the run.

Before any work, :func:`check_server_access` asks the server whether this user may write to the
experiment, so a missing login or a read-only account is one message, not a traceback after the data
are loaded.
"""

from __future__ import annotations

from typing import TypeGuard

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

from lungexp.tracking.credentials import CREDENTIAL_VARIABLES, CREDENTIALS_FILE, check_no_password_in
from lungexp.utils.errors import LungexpError

# mlflow.server.auth.routes.GET_CURRENT_USER and GET_USER_PERMISSION, and the permissions that can_update
# (mlflow.server.auth.permissions): importing mlflow.server.auth loads the whole server into every run.
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"
USER_PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
WRITE_PERMISSIONS = ("EDIT", "MANAGE")
REFUSED = (401, 403)
NOT_FOUND = 404


class ServerAccessError(LungexpError):
    """The tracking server refuses this client: no or wrong login (401), or no permission (403)."""


def is_tracking_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's address (``http://``, ``HTTPS://``: schemes have no case)."""
    return uri.partition("://")[0].lower() in ("http", "https")  # not urlsplit: it raises on a malformed host


def check_no_credentials_in(uri: str) -> None:
    """Refuse a tracking URI with a password (``http://user:password@host``, ``postgresql://u:p@host/db``):
    it is logged with the run's config. Entry points refuse it before Hydra writes anything
    (:mod:`lungexp.tracking.credentials`); this covers the store opened from Python."""
    check_no_password_in("logger.mlflow.tracking_uri (or MLFLOW_TRACKING_URI)", uri)


def is_refusal(error: BaseException) -> TypeGuard[MlflowException]:
    return isinstance(error, MlflowException) and error.get_http_status_code() in REFUSED


def access_error(uri: str, status: int, experiment_name: str) -> ServerAccessError:
    """The message for a 401 (who are you?) or a 403 (not allowed) from the server at ``uri``."""
    login = (f"set {' and '.join(CREDENTIAL_VARIABLES)} in the environment, or tracking_username and "
             f"tracking_password under [mlflow] in {CREDENTIALS_FILE} (never in the config: runs log it)")
    if status == 401:
        return ServerAccessError(f"{uri}: the MLflow tracking server wants a login and got none or a wrong one "
                                 f"(HTTP 401); {login}")
    user = read_mlflow_creds().username
    return ServerAccessError(f"{uri}: the MLflow tracking server does not let user '{user}' write to experiment "
                             f"'{experiment_name}' (HTTP 403); ask its admin for EDIT on that experiment, or log in "
                             f"as a user who has it ({login})")


def check_server_access(client: MlflowClient, experiment_name: str) -> None:
    """Raise :class:`ServerAccessError` unless the tracking server at ``client.tracking_uri`` lets this
    user write to ``experiment_name`` (and :class:`ConfigError` for a password in the URI).

    A new experiment needs no grant (its creator manages it); a server without ``basic-auth`` has no
    permission endpoint and lets everyone write.
    """
    check_no_credentials_in(client.tracking_uri)
    try:
        if not _may_write(client, experiment_name):
            raise access_error(client.tracking_uri, 403, experiment_name)
    except MlflowException as error:
        if is_refusal(error):
            raise access_error(client.tracking_uri, error.get_http_status_code(), experiment_name) from None
        raise


def _may_write(client: MlflowClient, experiment_name: str) -> bool:
    experiment = client.get_experiment_by_name(experiment_name)  # a 401 surfaces here
    if experiment is None:
        return True
    current = _auth_request(client.tracking_uri, CURRENT_USER_ENDPOINT, {})
    if current is None or current["user"]["is_admin"]:  # admins are not subject to grants
        return True
    permission = _auth_request(client.tracking_uri, USER_PERMISSION_ENDPOINT,
                               {"username": current["user"]["username"], "resource_type": "experiment",
                                "resource_id": experiment.experiment_id})
    return permission is None or permission["permission"] in WRITE_PERMISSIONS


def _auth_request(uri: str, endpoint: str, params: dict[str, str]) -> dict | None:
    """GET one of the basic-auth app's endpoints; None from a server without it (404)."""
    response = http_request(get_default_host_creds(uri), endpoint, "GET", params=params)
    if response.status_code == NOT_FOUND:
        return None
    return verify_rest_response(response, endpoint).json()
