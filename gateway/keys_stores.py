"""Where ``turnout keys`` manages keys and budgets: the database file itself, or a running
gateway's admin API (``--url``). Both answer in the admin API's shapes (gateway/keys_admin.py),
so the command prints the same either way.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import msgspec

from gateway import keys_admin
from gateway.client.api import ClientError, GatewayClient
from gateway.dbapi import Connection
from gateway.errors import GatewayError, StoreError
from gateway.keys import connect
from gateway.keys_admin import BudgetBody, NewKey


class KeyStore(Protocol):
    def create(self, fields: dict[str, Any]) -> dict[str, Any]: ...
    def keys(self, include_revoked: bool) -> list[dict[str, Any]]: ...
    def revoke(self, key: str) -> bool: ...
    def budgets(self) -> list[dict[str, Any]]: ...
    def set_budget(self, project: str, fields: dict[str, Any]) -> dict[str, Any]: ...
    def remove_budget(self, project: str) -> bool: ...
    def close(self) -> None: ...


class DatabaseStore:
    """The database file named by the routing file: no gateway needed; running ones see the
    change within their key refresh (two seconds)."""

    def __init__(self, database: str) -> None:
        self._connection: Connection = connect(database)

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._run(keys_admin.create, _convert(fields, NewKey))
        return created

    def keys(self, include_revoked: bool) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = keys_admin.listing(self._connection, include_revoked)
        return listed

    def revoke(self, key: str) -> bool:
        return keys_admin.revoke(self._connection, key) is not None

    def budgets(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = keys_admin.budgets(self._connection)
        return listed

    def set_budget(self, project: str, fields: dict[str, Any]) -> dict[str, Any]:
        budget: dict[str, Any] = self._run(
            keys_admin.set_budget, project, _convert(fields, BudgetBody)
        )
        return budget

    def remove_budget(self, project: str) -> bool:
        removed: bool = self._run(keys_admin.remove_budget, project)
        return removed

    def close(self) -> None:
        self._connection.close()

    def _run(self, operation: Any, *args: Any) -> Any:
        try:
            return operation(self._connection, *args)
        except GatewayError as exc:
            raise StoreError(exc.message) from None


class GatewayStore:
    """A running gateway's admin API (``POST/GET/DELETE /v1/keys``, ``/v1/budgets``)."""

    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._call("POST", "/v1/keys", fields, (201,))
        return created

    def keys(self, include_revoked: bool) -> list[dict[str, Any]]:
        path = "/v1/keys?all=true" if include_revoked else "/v1/keys"
        data: list[dict[str, Any]] = self._call("GET", path)["data"]
        return data

    def revoke(self, key: str) -> bool:
        return self._found("DELETE", f"/v1/keys/{quote(key, safe='')}")

    def budgets(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", "/v1/budgets")["data"]
        return data

    def set_budget(self, project: str, fields: dict[str, Any]) -> dict[str, Any]:
        budget: dict[str, Any] = self._call("PUT", f"/v1/budgets/{quote(project, safe='')}", fields)
        return budget

    def remove_budget(self, project: str) -> bool:
        return self._found("DELETE", f"/v1/budgets/{quote(project, safe='')}")

    def close(self) -> None:
        pass

    def _found(self, method: str, path: str) -> bool:
        try:
            self._call(method, path, None, (200,))
        except StoreError as exc:
            if exc.args[1:] == (404,):
                return False
            raise
        return True

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        try:
            status, answer = self._client.call(method, path, body, admin=True, expect=None)
        except ClientError as exc:
            raise StoreError(str(exc)) from None
        if status not in expect:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise StoreError(f"HTTP {status}: {message or answer}", status)
        return answer


def _convert(fields: dict[str, Any], kind: type[Any]) -> Any:
    """The API's checks on the CLI's own input, so both refuse the same values alike."""
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise StoreError(str(exc)) from None
