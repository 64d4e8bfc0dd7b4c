"""How a page call's ids join profiles: the plan every backend carries out.

A profile is stored under one key. An anonymous visitor's profile is stored under
``'p:' + tntId``. A profile that has a thirdPartyId is stored under
``'t:' + thirdPartyId``, and every tntId seen with it on a page call is an alias
(the ``identities`` table) pointing at that key. So a tntId belongs to at most one
profile and a profile has at most one thirdPartyId.

A page call carrying tntId T and thirdPartyId X:

1. T already belongs to X's profile: nothing to link.
2. T is unknown: T becomes an alias of X's profile (created empty if missing).
3. T is anonymous and X has no profile: T's profile moves to X's key; T becomes an alias.
4. T is anonymous and X has a profile: T's profile is merged into X's, X's values
   winning on conflicts (Target's rule), and deleted; T becomes an alias.
5. T belongs to another thirdPartyId's profile (someone else signed in on this
   device): T moves to X's profile (created empty if missing). No attribute
   moves: two known people are never merged.

A page call may also carry an Experience Cloud ID (``id.marketingCloudVisitorId``,
key ``'m:' + ECID``) and ``id.customerIds`` (key ``'c:' + integrationCode + ':' + id``,
the code percent-encoded). They are aliases too: after the plan above, each points at
the call's profile (moving from another profile if it pointed elsewhere, as a tntId
does in rule 5; nothing merges). And when T is new and there is no thirdPartyId, a
profile one of them already finds is the call's profile: T becomes an alias of it, so a
visitor who lost the Target cookie but kept the ECID finds the same profile again.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from profilebase.models import KeyKind
from profilebase.server.merge import dump_attrs

#: Key prefix of an Experience Cloud ID (marketingCloudVisitorId) alias.
ECID_PREFIX = "m:"
#: Key prefix of a customerIds alias.
CUSTOMER_ID_PREFIX = "c:"


def ecid_key(ecid: str) -> str:
    return ECID_PREFIX + ecid


def customer_id_key(integration_code: str, identifier: str) -> str:
    """The alias key of a customerIds entry; the code is percent-encoded, so ``:`` divides."""
    return f"{CUSTOMER_ID_PREFIX}{urllib.parse.quote(integration_code, safe='')}:{identifier}"


def customer_id_of(key: str) -> dict[str, str]:
    """``{"integrationCode", "id"}`` of a ``customer_id_key``."""
    code, _, identifier = key[len(CUSTOMER_ID_PREFIX) :].partition(":")
    return {"integrationCode": urllib.parse.unquote(code), "id": identifier}


@dataclass(frozen=True)
class LinkPlan:
    """What a page call does to the stored profiles before its profileParameters apply."""

    #: The stored key of the call's profile once the plan has run.
    target: str
    #: Create ``target`` as an empty profile.
    create: bool = False
    #: A stored anonymous profile to rename to ``target``.
    rename: str | None = None
    #: A stored anonymous profile to merge into ``target`` (its values lose) and delete.
    absorb: str | None = None
    #: A tntId key to point at ``target``.
    alias: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.create or self.rename or self.absorb or self.alias)


def plan_link(
    tnt_key: str,
    tnt_profile: str | None,
    third_key: str | None,
    third_exists: bool,
    known: str | None = None,
) -> LinkPlan:
    """Plan a page call: ``tnt_profile`` is the stored key T resolves to (None if unknown);
    ``known`` the stored key of a live profile the call's ECID or customerIds find."""
    if third_key is None:
        if tnt_profile is None:
            if known is not None:
                return LinkPlan(target=known, alias=tnt_key)
            return LinkPlan(target=tnt_key, create=True)
        return LinkPlan(target=tnt_profile)
    if tnt_profile == third_key:
        return LinkPlan(target=third_key)
    if tnt_profile is not None and tnt_profile.startswith(KeyKind.PC_ID.prefix):
        if third_exists:
            return LinkPlan(target=third_key, absorb=tnt_profile, alias=tnt_key)
        return LinkPlan(target=third_key, rename=tnt_profile, alias=tnt_key)
    return LinkPlan(target=third_key, create=not third_exists, alias=tnt_key)


def absorb_attrs(winner: str, loser: str, link_seq: int) -> str:
    """Merge two ``{name: [value, seq, ms]}`` documents; ``winner`` wins every conflict.

    A winning value older than the value it beats is restamped with ``link_seq``, so
    the loser's own history can never overturn it; its ``modifiedAt`` is kept.
    """
    merged = json.loads(loser)
    for name, entry in json.loads(winner).items():
        current = merged.get(name)
        if current is not None and current[1] > entry[1]:
            entry = [entry[0], link_seq, entry[2]]
        merged[name] = entry
    return dump_attrs(merged)
