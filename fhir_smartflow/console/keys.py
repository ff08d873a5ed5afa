"""The console's Redis keys, under the service's prefix (beside `connections.Keys`)."""

from __future__ import annotations


class ConsoleKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}console:"

    def accounts(self) -> str:
        return f"{self.prefix}accounts"

    def session(self, sid: str) -> str:
        return f"{self.prefix}session:{sid}"

    def login_failures(self, digest: str) -> str:
        return f"{self.prefix}login-failures:{digest}"

    def audit(self) -> str:
        return f"{self.prefix}audit"

    def generation(self) -> str:
        return f"{self.prefix}reload:generation"

    def last_change(self) -> str:
        return f"{self.prefix}reload:change"

    def status(self) -> str:
        return f"{self.prefix}reload:status"  # hash: process -> its last report
