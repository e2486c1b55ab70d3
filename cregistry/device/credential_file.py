"""The credentials file: created once, atomically, readable only by its owner."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from cregistry import errors
from cregistry.device.credentials import Credentials
from cregistry.errors import CredentialsFileInvalid, CredentialsFileMissing


class CredentialStore:
    """The credentials file at `path`.

    Creation writes a private temporary file and hard-links it to the final
    name; the link fails if the file exists, so of two agents started on the
    same file at once exactly one creates it and the other reads it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Credentials:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CredentialsFileMissing(f"no credentials file at {self.path}") from None
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            raise CredentialsFileInvalid(f"cannot read the credentials file {self.path}: {reason}") from None
        try:
            return Credentials.from_json(json.loads(text))
        except (ValueError, errors.InvalidInput) as error:
            raise CredentialsFileInvalid(
                f"{self.path} is not a valid credentials file ({error}); fix it or use another --credentials file"
            ) from None

    def load_or_create(self, make: Callable[[], Credentials]) -> tuple[Credentials, bool]:
        """The stored credentials, or new ones from `make()`; True when new."""
        if self.path.exists():
            return self.load(), False
        credentials = make()
        if self._create(credentials):
            return credentials, True
        return self.load(), False

    def mark_accepted(self, credentials: Credentials, when: str) -> Credentials:
        """Remember that the broker accepted these credentials (temp file + rename)."""
        updated = dataclasses.replace(credentials, last_accepted=when)
        temporary = self._write_private_temporary(updated)
        try:
            os.replace(temporary, self.path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(self.path.parent)
        return updated

    def is_private(self) -> bool:
        return self.path.stat().st_mode & 0o077 == 0

    def _create(self, credentials: Credentials) -> bool:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self._write_private_temporary(credentials)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # No hard links here (vfat, some FUSE mounts): O_EXCL still lets
                # only one agent create the file, though not all at once.
                return self._create_in_place(credentials)
            finally:
                temporary.unlink(missing_ok=True)
        except FileExistsError:
            return False
        except OSError as error:
            raise CredentialsFileInvalid(
                f"cannot write the credentials file {self.path}: {error.strerror or error}"
            ) from None
        _fsync_directory(self.path.parent)
        return True

    def _create_in_place(self, credentials: Credentials) -> bool:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            _write_synced(file, credentials)
        return True

    def _write_private_temporary(self, credentials: Credentials) -> Path:
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        # O_EXCL with mode 0600: the password is never in a file anyone else could open.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                fd = -1
                _write_synced(file, credentials)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return temporary


def _write_synced(file: TextIO, credentials: Credentials) -> None:
    """The file's whole content, on disk before the caller links or renames it."""
    json.dump(credentials.to_json(), file, indent=2)
    file.write("\n")
    file.flush()
    os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system syncs directories; the data is synced
    finally:
        os.close(fd)
