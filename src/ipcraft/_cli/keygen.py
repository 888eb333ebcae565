"""``ipcraft keygen``: make a CURVE key pair for the zmq+tcp:// and zmq+ipc:// schemes."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import cli_errors


@click.command("keygen")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory to write the two files into (created if missing).")
@cli_errors
def keygen(name: str, directory: Path) -> None:
    """Write the CURVE key pair NAME.key (public) and NAME.key_secret (secret, mode 0600).

    Give the secret file to this side as curve_keys=, and the public file to the other side: as
    curve_server= to clients when this side binds, or in the binding side's curve_clients= directory
    when this side connects.  Needs pyzmq (pip install 'ipcraft[zmq]').
    """
    from .._transports import module_for

    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter(f"{name!r}: a plain file name, without / and not starting with a dot")
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (directory / (name + suffix)).exists():
            raise click.BadParameter(f"{directory / (name + suffix)} exists; not overwriting a key")
    public, secret = module_for("zmq+tcp").generate_keypair(directory, name)
    click.echo(f"public key: {public}")
    click.echo(f"secret key: {secret} (mode 0600; keep it on this host)")
