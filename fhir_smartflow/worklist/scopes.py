"""The scopes the worklist asks for: exactly what it uses, in SMART v2 syntax (v1 by config)."""

from __future__ import annotations

# resource type → the v2 permission letters the worklist uses
RESOURCE_SCOPES = {
    "Task": "rus",  # list, open, complete
    "Patient": "r",  # the patient's name on a row
    "Communication": "rus",  # staff messages, marked read
    "Questionnaire": "r",  # the form a questionnaire task links
    "PractitionerRole": "rs",  # the roles the user holds
    "Provenance": "cs",  # who completed a task; a task's history
    "Group": "s",  # the groups a staff message may be addressed to
}
_V1 = {"r": "read", "s": "read", "c": "write", "u": "write", "d": "write"}
CONTEXT = ("openid", "fhirUser", "online_access")


def requested_scopes(version: str, *, ehr_launch: bool) -> str:
    scopes = ["launch"] if ehr_launch else []
    scopes += CONTEXT
    for rtype, letters in RESOURCE_SCOPES.items():
        if version == "v1":
            scopes += [f"user/{rtype}.{p}" for p in dict.fromkeys(_V1[ch] for ch in letters)]
        else:
            scopes.append(f"user/{rtype}.{letters}")
    return " ".join(scopes)
