"""What the run history keeps of values and errors.

A flow run's parameters become a JSON-safe snapshot, taken as the run starts: numbers,
strings, lists and dicts as they are (any mapping as a dict; tuples, sets and deques as
lists; a named tuple, a dataclass, an attrs class or a pydantic model as a dict of its
fields, by name; bounded: long strings and collections are cut, nesting stops at a
depth, where a container is kept as its masked repr; an int too long to show, one of
more than 640 digits, as its size), other objects as their ``repr``. Secrets are masked,
never stored: pydantic's ``SecretStr`` / ``SecretBytes`` values, any value whose name (a
parameter's, any mapping's key's, a record's field's: one rule, :func:`_secret_key`,
for both the history and the log line) looks like a secret (``password``, ``db_pass``,
``api_key``, ``token``, ``bearer``, ``secret``, ``credentials``, ...: whole words of the
name, singular or plural, so ``passenger_count`` and ``bypass`` are shown, and so are
names counting them, ``token_count`` and ``max_tokens``), the password of a URL
(``postgres://user:**********@host``), and the value of a secret's key in a connection
or query string (``Server=db;Pwd=**********;``, ``?access_token=**********``).

An error becomes ``ExcType: message`` (URL passwords masked, and the values pydantic's
validation errors quote, ``input_value=...``, left out: the parameters are stored, masked,
beside it), and the place in the user's code that raised it, ``path/to/file.py:LINE in
function``: the last frame of its traceback that is neither orchestr's, nor the standard
library's, nor an installed package's (else the last frame that is not orchestr's).

The same masking serves the engine's ``Beginning with parameters ...`` log line
(:func:`masked_repr`).

Every text made here can be stored (:func:`storable`): SQLite takes UTF-8, which a lone
surrogate is not (``os.fsdecode`` makes them of a file name that is not UTF-8, and such
names end up in messages, paths and run names); it is kept as its escape, ``\\udcff``.
One value the history could not store would cost the run its record (and, before the
writer tried again run by run, its whole batch: see :mod:`._writer`).

Nothing here imports ``json`` or ``pydantic``: it runs in the flow's own thread, where
the state observer takes the snapshot.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from .._text import describe_error
from .._tracebacks import is_internal_file, own_attribute

__all__ = [
    "MASK",
    "error_origin",
    "error_text",
    "is_secret_name",
    "json_safe",
    "mask_url",
    "masked_repr",
    "parameters_snapshot",
    "storable",
]

MASK = "**********"
_MAX_STRING = 1_000
_MAX_ITEMS = 100
_MAX_DEPTH = 6
_MAX_ERROR = 4_000
# Ints this big or bigger are shown as their size: Python may refuse to turn one of more
# digits into text (sys.set_int_max_str_digits() allows no lower limit), and json.dumps
# with it, or json.loads reading it back.
_BIG_INT = 10**sys.int_info.str_digits_check_threshold
_EXACT_DIGITS = 100_000  # ints of more digits than this are sized roughly (a cheap log)

# Words of a name (snake, kebab, dotted or camel case) that make it a secret's name.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passcode",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "bearer",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "cookie",
        "privatekey",
        "accesskey",
        "secretkey",
        "sessionkey",
        "accountkey",
        "sharedaccesskey",
        "signature",
    }
)
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("access", "key"),
        ("secret", "key"),
        ("session", "key"),
        ("account", "key"),
        ("client", "secret"),
    }
)
# A name that counts or measures its secrets is not a secret's name (see _counts): one
# that ends in a measuring word (token_count, tokens_used, password_min_length), ...
_MEASURES = frozenset(
    {
        "count",
        "counts",
        "total",
        "totals",
        "num",
        "number",
        "limit",
        "limits",
        "length",
        "len",
        "size",
        "max",
        "min",
        "used",
        "remaining",
        "budget",
        "usage",
    }
)
# Measuring words that may also describe the secret itself (a token_used is a token; a
# secret_number is a PIN): a count only after a secret's plural (tokens_used).
_AFTER_A_PLURAL = frozenset({"used", "remaining", "num", "number", "max", "min"})
# ... one that ends in a secret's plural with a counting word before it (max_tokens,
# num_api_keys, number_of_secrets), ...
_COUNTING = frozenset({"max", "min", "num", "n", "number", "total", "count"})
# ... and "tokens" right after a language model's kind of tokens (prompt_tokens).
_TOKEN_KINDS = frozenset(
    {
        "input",
        "output",
        "prompt",
        "completion",
        "context",
        "reasoning",
        "cached",
        "used",
        "remaining",
        "new",
        "generated",
        "estimated",
        "target",
        "word",
        "text",
    }
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)([^@\s/]+)(@)")
# One word ending so is a secret's name too (``adminpassword``, ``GITHUBTOKEN``): a name
# all in one case has no word breaks to find.
_SECRET_ENDINGS = ("password", "passwd", "passphrase", "secret", "token", "apikey")
# A key=value pair of a connection string (ODBC, ADO.NET, Azure: ``;``-separated, a
# value maybe in braces, ``Pwd={a;b}``), and of a URL's query (``&``-separated); the
# value is masked when the key is a secret's name. (A key is at most 64 characters: an
# unbounded lazy key before "\s*=" backtracks quadratically over a long run of spaces.)
_CONNECTION_PAIR = re.compile(
    r"(?:(?<=;)|^)(\s*)([A-Za-z][\w .-]{0,63}?)(\s*=\s*)(\{(?:[^}]|\}\})*\}|[^;]*)"
)
_QUERY_PAIR = re.compile(r"(?<=[?&])()([A-Za-z][\w.-]*)(=)([^&#\s]*)")
_SECRET_TYPES = frozenset({"SecretStr", "SecretBytes", "Secret"})


def is_secret_name(name: str) -> bool:
    """Whether a value called ``name`` should be masked: a word of it (``_``, ``-``,
    ``.`` and camelCase split it; a name in one case is one word) is a secret's word or
    ends in one, or two words are a secret's pair, singular or plural (``db_password``,
    ``apiKey``, ``GITHUB_TOKEN``, ``tokens``, ``cookies``, ``api-keys``,
    ``adminpasswords``), or its last word is ``pass`` (``db_pass``); unless the name
    counts them (``token_count``, ``tokens_used``, ``max_tokens``, ``prompt_tokens``:
    see :func:`_counts`). Not ``author``, ``passenger_count`` or ``bypass``: words of
    their own."""
    words = [w.lower() for w in _WORD.findall(name)]
    return _names_a_secret(words) and not _counts(words)


def _names_a_secret(words: list[str]) -> bool:
    singular = [_singular(w) for w in words]
    if any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in singular):
        return True
    # "pass" names a secret as the last word only (db_pass, adminPass; not pass_rate,
    # pass_through). (A flag named first_pass is masked too: on the safe side.)
    if words and words[-1] == "pass":
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(singular))


def _counts(words: list[str]) -> bool:
    """Whether a name naming secrets counts or measures them (shown): it ends in a
    measuring word (token_count, password_min_length; used, remaining, num, number, max
    and min only after a plural: tokens_used, not token_used), or in a secret's
    plural with a counting word before it (max_tokens, num_api_keys), or in "tokens"
    right after a language model's kind of tokens (prompt_tokens, completion_tokens)."""
    if len(words) < 2:
        return False  # tokens, secrets: the secrets themselves
    last = words[-1]
    if last in _MEASURES:
        before = words[-2]
        counted = _singular(before) != before and before != "credentials"  # (one secret)
        return last not in _AFTER_A_PLURAL or counted
    if _singular(last) == last:
        return False  # no plural at the end: a secret (access_token, new_password)
    if any(w in _COUNTING for w in words[:-1]):
        return True
    return last == "tokens" and words[-2] in _TOKEN_KINDS


def _singular(word: str) -> str:
    """A secret's word in the plural as its singular (cookies, passwords, tokens,
    githubtokens, the keys of api_keys); any other word as it is (pass, bypass)."""
    if word.endswith("s"):
        one = word[:-1]
        if one in _SECRET_WORDS or one.endswith(_SECRET_ENDINGS) or one == "key":
            return one
    return word


def mask_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked, and
    the value of every secret's key of a connection or query string
    (``Server=db;Password=**********;``, ``?token=**********``)."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", text)
    if "=" in text:  # (most texts have none: no regex runs for them)
        if ";" in text or text.partition("=")[0].strip().isidentifier():
            text = _CONNECTION_PAIR.sub(_masked_pair, text)
        if "?" in text or "&" in text:
            text = _QUERY_PAIR.sub(_masked_pair, text)
    return text


def _masked_pair(match: re.Match[str]) -> str:
    space, key, equals, value = match.groups()
    if not value or value == MASK or not is_secret_name(key):
        return match.group(0)
    return f"{space}{key}{equals}{MASK}"


def storable(text: str) -> str:
    """``text`` as SQLite can store it: valid UTF-8, a lone surrogate kept as its escape
    (``'\\udcff'``); the text itself when it is (the usual case, at the cost of a
    look)."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates, the only code points UTF-8 refuses
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded, storable, secrets-masked copy of ``value`` (never raises: a
    part that cannot be shown, say a failing ``repr``, is shown as such)."""
    try:
        return _safe(value, depth)
    except Exception:  # a repr or a model_dump that failed: the value is not worth a run
        return f"<{_type_name(value)}: not shown>"


def _type_name(value: Any) -> str:
    name = type(value).__name__
    return storable(name) if type(name) is str else "object"  # a metaclass's odd __name__


def _safe(value: Any, depth: int) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if -_BIG_INT < value < _BIG_INT else _int_size(value)
    if kind is str:
        return _text(value)
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if kind.__name__ in _SECRET_TYPES and kind.__module__.startswith("pydantic"):
        return MASK
    if isinstance(value, enum.Enum):
        return _safe(value.value, depth)
    for base in (int, float, str):  # their subclasses, as the base's value
        if isinstance(value, base):
            return _safe(base(value), depth)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if kind.__module__ == "datetime" and hasattr(value, "isoformat"):  # not imported here
        return value.isoformat()  # dates, times, datetimes
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return _text(path) if isinstance(path, str) else _safe(path, depth)
    fields = None if kind in _PLAIN or kind is dict else _fields(value)
    if depth >= _MAX_DEPTH:  # a container's repr would show its secrets: the masked one
        holds = fields is not None or isinstance(value, (Mapping, *_SEQUENCES))
        return _text(masked_repr(value) if holds else repr(value))
    if isinstance(value, Mapping):
        return _mapping(value.items(), len(value), depth)
    dump = getattr(value, "model_dump", None)  # a pydantic model: as it dumps itself
    if fields is not None and callable(dump) and not isinstance(value, type):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return _mapping(dumped.items(), len(dumped), depth)
    if fields is not None:  # a named tuple's, a dataclass's, an attrs class's: by name
        return _mapping(fields, len(fields), depth)
    if isinstance(value, _SEQUENCES):
        items: Any = value
        if isinstance(value, set | frozenset):  # in a stable order: the ones shown only
            items = sorted(itertools.islice(value, _MAX_ITEMS), key=repr)
        shown = [
            json_safe(item, depth + 1) for item, _ in zip(items, range(_MAX_ITEMS), strict=False)
        ]
        if len(value) > _MAX_ITEMS:
            shown.append(f"... ({len(value) - _MAX_ITEMS} more)")
        return shown
    return _text(repr(value))


# The containers of unnamed items the snapshot keeps as lists (their subclasses too).
_SEQUENCES = (list, tuple, set, frozenset, collections.deque)
# Exactly these types are no mapping, record or subclass: reprlib shows them (their
# items through repr1 again). Not dict: its keys are masked by name.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex, list, tuple, set, frozenset})


def _fields(value: Any, in_repr: bool = False) -> list[tuple[str, Any]] | None:
    """The fields of a record, by name: a named tuple's (``typing.NamedTuple``,
    ``collections.namedtuple``), a dataclass instance's, an attrs instance's, a pydantic
    model's (and the extra ones it allows); None for any other value. The names the
    history and the log line mask by, as they mask a mapping's keys (:func:`_secret_key`).
    ``in_repr``: only the fields its own repr shows (not a ``field(repr=False)``)."""
    kind = type(value)
    if isinstance(value, type):
        return None
    names = getattr(kind, "_fields", None)
    if isinstance(value, tuple) and isinstance(names, tuple):
        if all(type(name) is str for name in names):
            return list(zip(names, value, strict=False))
        return None
    if dataclasses.is_dataclass(value):
        shown = [f.name for f in dataclasses.fields(value) if f.repr or not in_repr]
        return [(name, getattr(value, name, None)) for name in shown]
    attributes = getattr(kind, "__attrs_attrs__", None)
    if isinstance(attributes, tuple):
        shown = [a.name for a in attributes if getattr(a, "repr", True) or not in_repr]
        return [(name, getattr(value, name, None)) for name in shown if isinstance(name, str)]
    model = getattr(kind, "model_fields", None)
    if isinstance(model, Mapping) and callable(getattr(value, "model_dump", None)):
        shown = [n for n, f in model.items() if getattr(f, "repr", True) or not in_repr]
        found = [(name, getattr(value, name, None)) for name in shown if isinstance(name, str)]
        extra = getattr(value, "__pydantic_extra__", None)
        if isinstance(extra, Mapping):
            found += [(name, item) for name, item in extra.items() if isinstance(name, str)]
        return found
    return None


def _secret_key(key: Any) -> bool:
    """Whether a mapping's key (or a field's name) names a secret, by its text: a
    string's own, any other key's ``repr`` (``b'token'``), as the history keeps it."""
    return is_secret_name(key if isinstance(key, str) else _key_name(key))


def _text(text: str) -> str:
    """A text as the snapshot keeps it: URL passwords masked, cut, storable."""
    return storable(_short(mask_url(str(text))))


def _int_size(value: int) -> str:
    """``<int of N digits>``, found without turning the int into text (which Python
    refuses past ``sys.get_int_max_str_digits()``)."""
    size = abs(value)
    digits = int(math.log10(size)) + 1  # a float: one too many just below a power of ten
    if digits > _EXACT_DIGITS:
        return f"<int of about {digits} digits>"
    if 10 ** (digits - 1) > size:
        digits -= 1
    return f"<int of {digits} digits>"


def _mapping(items: Any, size: int, depth: int) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, item in items:
        if len(shown) == _MAX_ITEMS:
            shown["..."] = f"({size - _MAX_ITEMS} more)"
            break
        name = storable(_short(str(key))) if isinstance(key, str) else _key_name(key)
        shown[name] = MASK if _secret_key(key) else json_safe(item, depth + 1)
    return shown


def _key_name(key: Any) -> str:
    try:
        return storable(_short(str(repr(key))))
    except Exception:
        return f"<{_type_name(key)}>"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_STRING else text[: _MAX_STRING - 3] + "..."


# -- the log line's reprs -----------------------------------------------------------------
_reprs: Any = None
_SHORT_REPR = 100


def masked_repr(value: Any, name: str = "") -> str:
    """``repr(value)`` shortened like ``reprlib`` does (as the engine's log lines show
    values), with the secrets :func:`json_safe` masks masked: a value named like a
    secret, the items of any mapping and the fields of any record (:func:`_fields`) so
    named, shown by their names (``OrderedDict({'token': **********})``, ``Creds(user='u',
    password=**********)``), ``SecretStr`` (its own repr), URL passwords (masked in the
    whole text before it is cut)."""
    if name and is_secret_name(name):
        return MASK
    global _reprs
    if _reprs is None:
        _reprs = _masking_repr()
    try:
        text = str(_reprs.repr(value))
    except Exception:  # a repr that failed deep inside a container: its type, at least
        text = f"<{_type_name(value)}: not shown>"
    return text if len(text) <= _SHORT_REPR else text[: _SHORT_REPR - 3] + "..."


def _masking_repr() -> Any:
    import reprlib  # deferred: only a flow run's first log line needs it

    class MaskingRepr(reprlib.Repr):
        def repr_str(self, x: Any, level: int) -> str:
            return str(super().repr_str(mask_url(x), level))

        def repr_int(self, x: Any, level: int) -> str:
            if -_BIG_INT < x < _BIG_INT:
                return str(super().repr_int(x, level))
            return _int_size(x)  # its repr may raise (too many digits), and is too long

        def repr1(self, x: Any, level: int) -> str:
            # By what a value is, not by its type's name (reprlib's way): a mapping of
            # any kind, a record and a subclass of a sequence show their items masked;
            # their own reprs (an OrderedDict's, a namedtuple's) would show them all.
            # The builtins first, which are none of those (most values are).
            if type(x) in _PLAIN:
                return str(super().repr1(x, level))
            if type(x) is dict:
                return self._mapping(x, level)
            fields = _fields(x, in_repr=True)
            if fields is not None:
                return self._record(type(x).__name__, fields, level)
            if isinstance(x, Mapping):
                return self._mapping(x, level)
            kind = type(x)
            for base in _SEQUENCES:
                if isinstance(x, base) and kind is not base:
                    shown = getattr(self, "repr_" + base.__name__)(x, level)
                    return f"{kind.__name__}({shown})"
            return str(super().repr1(x, level))

        def _mapping(self, x: Any, level: int) -> str:
            if not x:
                shown = "{}"
            elif level <= 0:
                shown = "{" + self.fillvalue + "}"
            else:
                pieces = [
                    f"{self.repr1(key, level - 1)}: {self._item(key, item, level - 1)}"
                    for key, item in itertools.islice(x.items(), self.maxdict)
                ]
                if len(x) > self.maxdict:
                    pieces.append(self.fillvalue)
                shown = "{" + ", ".join(pieces) + "}"
            return shown if type(x) is dict else f"{type(x).__name__}({shown})"

        def _record(self, name: str, fields: list[tuple[str, Any]], level: int) -> str:
            if level <= 0 and fields:
                return f"{name}({self.fillvalue})"
            shown = ", ".join(
                f"{field}={self._item(field, item, level - 1)}" for field, item in fields
            )
            return f"{name}({shown})"

        def _item(self, key: Any, item: Any, level: int) -> str:
            return MASK if _secret_key(key) else self.repr1(item, level)

        def repr_instance(self, x: Any, level: int) -> str:
            try:
                text = mask_url(repr(x))
            except Exception:
                return f"<{type(x).__name__} instance at {id(x):#x}>"
            if len(text) > self.maxother:
                i = max(0, (self.maxother - 3) // 2)
                j = max(0, self.maxother - 3 - i)
                text = text[:i] + self.fillvalue + text[len(text) - j :]
            return text

    found = MaskingRepr()
    found.maxlevel = 3
    found.maxstring = 60
    found.maxother = 60
    found.maxlong = 40
    return found


def parameters_snapshot(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The history's copy of a flow run's parameters (see :func:`json_safe`)."""
    return {
        name: MASK if _secret_key(name) else json_safe(value, 1)
        for name, value in parameters.items()
    }


# -- errors ------------------------------------------------------------------------------
def error_text(error: BaseException | None) -> str | None:
    """``ExcType: message`` (masked URLs, bounded), or None."""
    if error is None:
        return None
    text = describe_error(error)
    text = _PYDANTIC_INPUT.sub(r"\g<1>]", mask_url(text))
    return storable(text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "...")


# pydantic's ValidationError lines quote the value: "[type=int_parsing,
# input_value='sk-live-1234', input_type=str]" (greedy: to the line's last input_type).
_PYDANTIC_INPUT = re.compile(r"(\[type=[^,\]\s]+), input_value=.*, input_type=[^\]\s]+\]$", re.M)

_STDLIB_DIR = os.path.join(os.path.dirname(os.__file__), "")


def _is_library(filename: str) -> bool:
    return (
        filename.startswith(_STDLIB_DIR)
        or "site-packages" in filename
        or "dist-packages" in filename
        or filename.startswith("<")
    )


# Where an error's origin is kept once found (see note_origin).
_ORIGIN_FOUND = "_orchestr_history_origin"


def note_origin(error: BaseException | None) -> None:
    """Find ``error``'s origin now, as the run it ends ends, and keep it with the error
    for :func:`error_origin`: later, the traceback also holds the frames the error went
    through on its way out (the caller of a flow run that failed with a group of task
    failures, which has no line of the user's code of its own), and the history's writer
    reads it later."""
    if error is None or isinstance(own_attribute(error, _ORIGIN_FOUND), str):
        return
    found = error_origin(error)
    if found is not None:
        try:
            setattr(error, _ORIGIN_FOUND, found)
        except Exception:  # an exception type that refuses attributes: found later
            pass


def error_origin(error: BaseException | None) -> str | None:
    """``path/to/file.py:LINE in function``: the line of the user's code that raised
    ``error`` (or the exception it was raised from, or, for a group, the first one in it
    that shows one), if its traceback shows one; the one :func:`note_origin` kept."""
    found = None if error is None else own_attribute(error, _ORIGIN_FOUND)
    if isinstance(found, str):
        return found
    seen: set[int] = set()
    todo = [] if error is None else [error]
    while todo:
        exc = todo.pop(0)
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        kept = own_attribute(exc, _ORIGIN_FOUND)  # a member's kept one (raised in a worker)
        found = kept if isinstance(kept, str) else _last_user_frame(exc)
        if found is not None:
            return found
        todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
    return None


def _last_user_frame(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    user = outside = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if not is_internal_file(code.co_filename):
            outside = tb
            if not _is_library(code.co_filename):
                user = tb
        tb = tb.tb_next
    chosen = user or outside
    if chosen is None:
        return None
    code = chosen.tb_frame.f_code
    # (A file name is storable only if the file system's encoding let it be.)
    return storable(f"{code.co_filename}:{chosen.tb_lineno} in {code.co_name}")
