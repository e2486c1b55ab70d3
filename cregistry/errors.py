"""Domain exceptions. The web layer (web/errors.py) and the CLI (cli/errors.py)
each map them to statuses and exit codes in one place."""


class CregistryError(Exception):
    """Base of every error cregistry reports to a client or an operator."""


class ConfigError(CregistryError):
    """A CREGISTRY_* setting has a value cregistry cannot use."""


class InvalidInput(CregistryError):
    """A username, password, topic, access or other input breaks the rules."""


class StorageUnavailable(CregistryError):
    """Redis cannot be reached, stalls or refuses the write; nothing was decided."""


class PasswordChecksBusy(CregistryError):
    """Every bcrypt slot stayed taken for the whole check budget; nothing was decided."""


class ReplicasUnconfirmed(StorageUnavailable):
    """The change reached the Redis primary but not CREGISTRY_REDIS_MIN_REPLICAS replicas in time."""


class RequestDenied(CregistryError):
    """An operator denied the registration request with these credentials."""


class UsernameTaken(CregistryError):
    """The username exists already (with other credentials)."""


class UserNotFound(CregistryError):
    """No user with that name."""


class RoleNotFound(CregistryError):
    """No role with that name."""


class CertificateRefused(CregistryError):
    """A certificate cannot be issued or revoked as asked (no CA, no valid current certificate to renew)."""


class EnrollmentNotFound(CregistryError):
    """No enrollment with that name (it may have expired or been revoked)."""


class EnrollmentExists(CregistryError):
    """An enrollment with that name exists already."""


class EnrollmentRefused(CregistryError):
    """The enrollment token is unknown, revoked, expired or used up, or the username is not the enrollment's."""


class RequestNotFound(CregistryError):
    """No pending registration request matches (it may have expired or been handled)."""


class AmbiguousRequest(CregistryError):
    """Several pending requests match; a pairing ID must say which."""


class ClientIdTaken(CregistryError):
    """A client ID belongs to another user; an owned client ID is never taken from its owner."""


class RequestContested(CregistryError):
    """Another candidate for the username shares the request's pairing ID; approving needs force."""


class PermissionNotFound(CregistryError):
    """The user or role has no permission with that topic pattern."""


# -- the device agent (device/) --------------------------------------------
class CredentialsFileMissing(CregistryError):
    """The device's credentials file does not exist."""


class CredentialsFileInvalid(CregistryError):
    """The credentials file cannot be read or written, or is not what `cregistry device` wrote."""


class CredentialsRefused(CregistryError):
    """The broker refused credentials it had accepted before (with --exit-on-refusal)."""


class RegistrationFailed(CregistryError):
    """The registration URL answered something the device cannot act on."""
