"""The plugin's settings, validated by marshmallow (CLI, console and API share this schema)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

BIND_MODES = ("search", "direct")
GROUP_SEARCHES = ("group_objects", "member_of")
MEMBER_ATTRIBUTES = ("member", "uniqueMember")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


class ProfileRule(Schema):
    group = fields.String(required=True, validate=validate.Length(min=1))
    profile = fields.String(required=True, validate=validate.Length(min=1))


class ServicesRule(Schema):
    group = fields.String(required=True, validate=validate.Length(min=1))
    services = fields.List(fields.String(validate=validate.Length(min=1)), required=True)


class LdapSettings(Schema):
    # -- the server ---------------------------------------------------------------
    uris = fields.List(
        fields.String(),
        load_default=list,
        metadata=_help("ldap:// or ldaps:// URIs, tried in order; empty: the plugin is off"),
    )
    start_tls = fields.Boolean(load_default=False, metadata=_help("StartTLS on ldap:// URIs"))
    ca_file = fields.String(
        load_default="", metadata=_help("CA certificates (PEM) to verify the server with")
    )
    verify_certificate = fields.Boolean(
        load_default=True, metadata=_help("refuse a server certificate the CA does not vouch for")
    )
    connect_timeout = fields.Float(
        load_default=5.0, validate=validate.Range(min=0.1, max=120), metadata=_help("seconds")
    )
    operation_timeout = fields.Float(
        load_default=10.0, validate=validate.Range(min=0.1, max=300), metadata=_help("seconds")
    )
    fallback_to_local = fields.Boolean(
        load_default=True,
        metadata=_help(
            "let local accounts log in when the directory is unreachable or does not know "
            "the login (accounts created by this plugin never have a local password)"
        ),
    )
    # -- finding and binding the user -------------------------------------------------
    bind_mode = fields.String(
        load_default="search",
        validate=validate.OneOf(BIND_MODES),
        metadata=_help("search: find the user with the service account, then bind as it; "
                       "direct: bind with the DN template"),
    )  # fmt: skip
    user_dn_template = fields.String(
        load_default="",
        metadata=_help("direct bind: e.g. uid={login},ou=people,dc=example,dc=org or "
                       "{login}@example.org (the login is escaped)"),
    )  # fmt: skip
    service_dn = fields.String(load_default="", metadata=_help("search bind: service account DN"))
    service_password = fields.String(
        load_default="", metadata={"secret": True, "help": "service account password (encrypted)"}
    )
    base_dn = fields.String(load_default="", metadata=_help("where users are searched"))
    user_filter = fields.String(
        load_default="(objectClass=person)",
        metadata=_help("ANDed with (login attribute=login); AD: (objectClass=user)"),
    )
    login_attribute = fields.String(load_default="uid", metadata=_help("AD: sAMAccountName"))
    first_name_attribute = fields.String(load_default="givenName")
    last_name_attribute = fields.String(load_default="sn")
    email_attribute = fields.String(load_default="mail")
    # -- groups ---------------------------------------------------------------------------
    group_search = fields.String(
        load_default="group_objects",
        validate=validate.OneOf(GROUP_SEARCHES),
        metadata=_help("group_objects: groups whose member attribute names the user; "
                       "member_of: the user's memberOf attribute"),
    )  # fmt: skip
    group_base_dn = fields.String(load_default="", metadata=_help("empty: the base DN"))
    group_filter = fields.String(
        load_default="(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)"
        "(objectClass=group))"
    )
    group_member_attribute = fields.String(
        load_default="member", validate=validate.OneOf(MEMBER_ATTRIBUTES)
    )
    member_of_attribute = fields.String(load_default="memberOf")
    group_name_attribute = fields.String(load_default="cn")
    nested_groups = fields.Boolean(
        load_default=False,
        metadata=_help("count groups of groups (Active Directory: LDAP_MATCHING_RULE_IN_CHAIN; "
                       "other servers: followed level by level)"),
    )  # fmt: skip
    profile_mapping = fields.List(
        fields.Nested(ProfileRule),
        load_default=list,
        metadata=_help("ordered group -> profile rules, first match wins; a user matching "
                       "none is refused. A group is its name or its full DN"),
    )  # fmt: skip
    services_mapping = fields.List(
        fields.Nested(ServicesRule),
        load_default=list,
        metadata=_help("group -> services the user may see (union of every matching rule; "
                       "no match: every study)"),
    )  # fmt: skip

    @validates("uris")
    def _check_uris(self, uris: list[str], **_: object) -> None:
        for uri in uris:
            if not uri.lower().startswith(("ldap://", "ldaps://")) or " " in uri:
                raise ValidationError(f"{uri!r} is not an ldap:// or ldaps:// URI")

    @validates_schema
    def _check_consistency(self, data: dict, **_: object) -> None:
        if not data.get("uris"):
            return  # not configured yet: the plugin stays off
        if data["start_tls"] and any(u.lower().startswith("ldaps://") for u in data["uris"]):
            raise ValidationError("StartTLS applies to ldap:// URIs, not ldaps://", "start_tls")
        if data["bind_mode"] == "direct" and "{login}" not in data["user_dn_template"]:
            raise ValidationError("direct bind needs a template with {login}", "user_dn_template")
        if data["bind_mode"] == "search" and not data["base_dn"]:
            raise ValidationError("search bind needs a base DN", "base_dn")
        if data["group_search"] == "group_objects" and not (
            data["group_base_dn"] or data["base_dn"]
        ):
            raise ValidationError("group objects need a group base DN or a base DN", "base_dn")
        if not data["profile_mapping"]:
            raise ValidationError("map at least one group to a profile", "profile_mapping")
