"""The platform admin's commands: ``config show``, ``tenants``, ``keys`` and ``gateways``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ironwatch import config
from ironwatch.cli.command import add, data_dir, group, print_json, settings, store
from ironwatch.model import Role


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print every setting, its value and where the value came from."""
    rows = [(name, config.masked(name, value), origin) for name, value, origin in settings(args).items()]
    if args.json:
        print_json([{"name": n, "value": v, "origin": o} for n, v, o in rows])
        return 0
    width = max(len(n) for n, _, _ in rows)
    for name, value, origin in rows:
        print(f"{name:<{width}}  {value!s:<40}  ({origin})")
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    """Create a tenant; its data lives under --root (default DATA_DIR/lake/NAME)."""
    from ironwatch import lake

    root_url = args.root or settings(args).root_url(args.name)
    tenants = store(args)
    lake.open_root(root_url)  # refuse a root that cannot be opened before registering it
    tenant = tenants.create_tenant(args.name, root_url)
    print(f"tenant {tenant.name} created; storage root {tenant.root_url}")
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    """List tenants and their storage roots."""
    for t in store(args).tenants():
        print(f"{t.name}\t{t.root_url}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key and print it once; only its hash is stored."""
    key, secret = store(args).create_key(
        args.tenant, args.role, site=args.site, gateway=args.gateway, label=args.label
    )
    if args.json:
        print_json({"id": key.id, "tenant": key.tenant, "role": key.role.value, "key": secret})
    else:
        print(secret)
        print(
            f"(key {key.id}, role {key.role.value}, tenant {key.tenant}: shown once, store it now)",
            file=sys.stderr,
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id (or by the key itself); it is refused from then on."""
    key = store(args).revoke_key(args.key, tenant=args.tenant)
    print(f"key {key.id} of tenant {key.tenant} revoked")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List a tenant's keys (never the secrets)."""
    for k in store(args).keys(args.tenant):
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        scope = ",".join(x for x in (k.site and f"site={k.site}", k.gateway and f"gateway={k.gateway}") if x)
        print(f"{k.id}\t{k.role.value}\t{state}\t{scope or '-'}\t{k.label or ''}")
    return 0


def cmd_gateways_add(args: argparse.Namespace) -> int:
    """Register a gateway to a site, so that its MQTT messages are accepted."""
    g = store(args).add_gateway(args.tenant, args.gateway, args.site)
    print(f"gateway {g.gateway} registered to site {g.site} of tenant {g.tenant}")
    return 0


def cmd_gateways_list(args: argparse.Namespace) -> int:
    """List a tenant's gateways."""
    for g in store(args).gateways(args.tenant):
        seen = g.last_seen_at.isoformat() if g.last_seen_at else "never"
        print(f"{g.gateway}\t{g.site}\tlast heartbeat {seen}")
    return 0


def register(sub: Any) -> None:
    """Add ``config``, ``tenants``, ``keys`` and ``gateways`` to the ``ironwatch`` parser."""
    cfg = group(sub, "config", "show the settings")
    p = add(cfg, "show", cmd_config_show, "ironwatch config show --data-dir /srv/ironwatch")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    ten = group(sub, "tenants", "create and list tenants")
    p = add(ten, "create", cmd_tenants_create, "ironwatch tenants create acme --data-dir /srv/ironwatch")
    p.add_argument("name")
    p.add_argument("--root", help="storage root URL (default DATA_DIR/lake/NAME)")
    data_dir(p)
    p = add(ten, "list", cmd_tenants_list, "ironwatch tenants list --data-dir /srv/ironwatch")
    data_dir(p)

    keys = group(sub, "keys", "create, list and revoke API keys")
    p = add(
        keys, "create", cmd_keys_create, "ironwatch keys create --tenant acme --role analyst --data-dir DIR"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--site", help="limit the key to one site")
    p.add_argument("--gateway", help="limit the key to one gateway")
    p.add_argument("--label", help="a note on what the key is for")
    p.add_argument("--json", action="store_true", help="print JSON")
    data_dir(p)
    p = add(keys, "revoke", cmd_keys_revoke, "ironwatch keys revoke 3f9a0c1b2d4e --data-dir DIR")
    p.add_argument("key", help="key id, or the key itself")
    p.add_argument("--tenant", help="only revoke it if it belongs to this tenant")
    data_dir(p)
    p = add(keys, "list", cmd_keys_list, "ironwatch keys list --tenant acme --data-dir DIR")
    p.add_argument("--tenant", required=True)
    data_dir(p)

    gws = group(sub, "gateways", "register and list gateways")
    p = add(
        gws,
        "add",
        cmd_gateways_add,
        "ironwatch gateways add gw-hall-a --site hall-a --tenant acme --data-dir DIR",
    )
    p.add_argument("gateway")
    p.add_argument("--site", required=True)
    p.add_argument("--tenant", required=True)
    data_dir(p)
    p = add(gws, "list", cmd_gateways_list, "ironwatch gateways list --tenant acme --data-dir DIR")
    p.add_argument("--tenant", required=True)
    data_dir(p)
