"""Values accepted at load that failed or misbehaved during the run (issue 8, class 2): each is
now an input error at its file:line, found before anything starts.

Timeouts positive and finite; counts, vCPUs and memory within what a run and a host can use;
guest templates checked against their fields; no control characters in anything that reaches
domain XML or a command line; names of bounded length; one cell per id.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compatlab.catalog import parse_hardware, parse_image, parse_product
from compatlab.errors import CatalogError, InputError
from compatlab.matrix import load_matrix
from compatlab.run import load_lab_settings
from tests.support.catalogs import CANDIDATE, make_project, matrix, write
from tests.support.hostile import AXES, BODY_LINE, load_error, matrix_error


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


# -- values the run cannot use ------------------------------------------------------------------

SCENARIO_VALUES = [
    ("boot_timeout", "0", "greater than 0"),
    ("boot_timeout", ".nan", "finite"),
    ("boot_timeout", ".inf", "finite"),
    ("boot_timeout", "-.inf", "finite"),
    ("boot_timeout", "1e300", "at most 86400"),
    ("bake", "0", "greater than 0"),
    ("bake", ".nan", "finite"),
    ("bake", ".inf", "finite"),
    ("boots", "100000000000000000000000000000000000000", "at most 100"),
    ("boot_loop", "1000000", "at most 100"),
    ("reruns", "1000", "at most 10"),
    ("boot_regression", ".nan", "finite"),
    ("boot_regression", ".inf", "finite"),
]


@pytest.mark.parametrize(("key", "value", "message"), SCENARIO_VALUES)
def test_scenario_values_the_run_cannot_use(
    project: Path, key: str, value: str, message: str
) -> None:
    error = matrix_error(project, AXES + f"scenario: {{{key}: {value}}}\n")
    assert message in error.message and key in error.message
    assert (error.line, error.column) == (BODY_LINE, 14 + len(key))


def test_include_scenario_values_are_checked_the_same_way(project: Path) -> None:
    body = AXES + "include:\n  - {build: lin-a, scenario: {boot_timeout: .nan}}\n"
    error = matrix_error(project, body)
    assert "finite" in error.message and error.line == BODY_LINE + 1


def test_sane_values_still_load(project: Path) -> None:
    body = AXES + (
        "scenario: {boots: 100, boot_loop: 100, reruns: 10, boot_timeout: 86400, bake: 0.5,"
        " boot_regression: 1.5}\n"
    )
    settings = load_matrix(matrix(project, body), catalog_root=project).scenario
    assert (settings.boots, settings.boot_timeout, settings.bake) == (100, 86400.0, 0.5)


CANDIDATE_VALUES = [
    ("reboots: 1000000000", "at most 10"),
    ("exit_codes: {success: [99999999999999999999]}", "exit code"),
    ("exit_codes: {reboot: [-99999999999]}", "exit code"),
    ('name: "sensor\\e[2J"', "control character"),
    ('version: "1.0\\n2.0"', "control character"),
    ("name: " + "s" * 300, "300 characters"),
]


@pytest.mark.parametrize(("line", "message"), CANDIDATE_VALUES)
def test_candidate_values_the_run_cannot_use(project: Path, line: str, message: str) -> None:
    key = line.split(":", 1)[0]
    text = "\n".join(
        (f"  {line}" if raw.strip().startswith(f"{key}:") else raw)
        for raw in CANDIDATE.lstrip("\n").splitlines()
    )
    if f"  {line}" not in text:
        text += f"\n  {line}"
    path = write(project / "matrix" / "c.yaml", text + "\n" + AXES)
    error = load_error(path, project)
    assert message in error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vcpus: 100000\nmemory: 256MiB", "vcpus must be at most 256"),
        ("vcpus: 1\nmemory: 99999999999GiB", "at most 4 TiB"),
        ("vcpus: 1\nmemory: 10000000000000", "at most 4 TiB"),
        ("vcpus: 1\nmemory: " + "9" * 5000, "a number of 5000 characters is too long"),
        ("vcpus: 1\nmemory: " + "9" * 5000 + "MiB", "is not a size"),
    ],
    ids=["vcpus", "memory GiB", "memory number", "memory 5000 digits", "memory 5000 digits MiB"],
)
def test_resources_beyond_any_host(project: Path, text: str, message: str) -> None:
    path = write(
        project / "configs" / "hardware" / "huge.yaml", f"name: huge\n{text}\nfirmware: bios\n"
    )
    with pytest.raises(CatalogError, match=re.escape(message)) as info:
        parse_hardware(path)
    assert info.value.line in (2, 3)


IMAGE = """\
name: lin
os_family: linux
build: "1.0"
disk: /nonexistent/lin.qcow2
firmware: [bios]
channel: agent
"""

TEMPLATES = [
    ("mount_payload", "'mount {label} {nope}'", "unknown field {nope}"),
    ("service_check", "'{service.__class__}'", "{service.__class__}"),
    ("service_check", "'systemctl status {service[0]}'", "{service[0]}"),
    ("unmount_payload", "'umount {label}'", "unknown field {label}"),
    ("mount_payload", "'mount {} x'", "unknown field {}"),
    ("mount_payload", "'mount {0} x'", "unknown field {0}"),
    ("service_check", "'x {service!r}'", "conversion"),
    ("service_check", "'x {service:>{width}}'", "format spec"),
    ("mount_payload", "'mount {label'", "not a valid template"),
    ("service_check", "'x } y'", "not a valid template"),
]


@pytest.mark.parametrize(("key", "value", "message"), TEMPLATES)
def test_guest_templates_are_checked_against_their_fields(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    path = write(tmp_path / "lin.yaml", IMAGE + f"guest:\n  {key}: {value}\n")
    with pytest.raises(CatalogError, match=re.escape(message)) as info:
        parse_image(path)
    assert (info.value.file, info.value.line) == (path, 8)


def test_guest_templates_with_their_own_fields_load(tmp_path: Path) -> None:
    guest = (
        "guest:\n  mount_payload: 'mkdir -p {path} && mount -L {label} {path}'\n"
        "  unmount_payload: 'umount {path}'\n  service_check: 'sc query {service} | x'\n"
    )
    conventions = parse_image(write(tmp_path / "lin.yaml", IMAGE + guest)).conventions
    assert conventions.service_check.format(service="s") == "sc query s | x"


CONTROL = [
    ("cmdline", '"console=ttyS0 \\e[31m"'),
    ("cmdline", '"quiet\\nroot=/dev/sda"'),
    ("cmdline", '"quiet\\x07"'),
    ("cmdline", '"quiet\\N"'),  # U+0085, a C1 control
    ("cmdline", '"quiet\\ud800"'),  # a lone surrogate: not even encodable as UTF-8
    ("display_name", '"Windows\\r11"'),
    ("kernel", '"/boot/vmlinuz\\0"'),
    ("guest", '{payload_path: "/run/payload\\t"}'),
]


@pytest.mark.parametrize(("key", "value"), CONTROL)
def test_control_characters_never_reach_xml_or_a_command_line(
    tmp_path: Path, key: str, value: str
) -> None:
    path = write(tmp_path / "lin.yaml", IMAGE + f"{key}: {value}\n")
    with pytest.raises(CatalogError, match="control character") as info:
        parse_image(path)
    assert info.value.line == 7


def test_control_characters_in_product_commands_and_services(project: Path) -> None:
    product = project / "configs" / "products" / "bad.yaml"
    base = "name: bad\nvendor: T\nlinux:\n  payload: p\n  uninstall: u\n"
    write(product, base + '  install: "sh i.sh\\0"\n')
    with pytest.raises(CatalogError, match="control character") as info:
        parse_product(product)
    assert info.value.line == 6
    write(product, base + '  install: i\n  health: {services: ["acme\\e[2J"]}\n')
    with pytest.raises(CatalogError, match="control character"):
        parse_product(product)
    # A shell script written as a block is still a command: tabs and line breaks are allowed.
    write(product, base + "  install: |\n    set -e\n    \tsh i.sh\n")
    assert parse_product(product).payloads["linux"].commands.install == "set -e\n\tsh i.sh\n"


@pytest.mark.parametrize(
    ("folder", "text", "what"),
    [
        ("images", IMAGE.replace("name: lin", "name: " + "a" * 65), "image name"),
        (
            "configs/hardware",
            "name: " + "h" * 65 + "\nvcpus: 1\nmemory: 64\nfirmware: bios\n",
            "hardware name",
        ),
        (
            "configs/products",
            "name: " + "p" * 300 + "\nvendor: v\nlinux: {payload: p, install: i, uninstall: u}\n",
            "product name",
        ),
    ],
)
def test_names_of_bounded_length(tmp_path: Path, folder: str, text: str, what: str) -> None:
    path = write(tmp_path / folder / "x.yaml", text)
    parse = {"images": parse_image, "configs/hardware": parse_hardware}.get(folder, parse_product)
    with pytest.raises(CatalogError, match=f"{what} is .* characters long, more than 64") as info:
        parse(path)
    assert info.value.line == 1
    assert parse(write(path, re.sub(r"name: (.)\1+", lambda m: "name: " + m[1] * 64, text)))


def test_slots_naming_one_product_twice_make_duplicate_cells(project: Path) -> None:
    body = """
    axes:
      build: [lin-a]
      hardware: [bios-1cpu]
      products:
        av: [av, none]
        edr: [av, none]
    """
    error = matrix_error(project, body)
    assert "lin-a/bios-1cpu/av" in error.message and "twice" in error.message
    path = project / "matrix" / "m.yaml"
    # Blamed where the second differs from the first; both origins named, file:line each.
    assert (error.file, error.line) == (path, 14)
    assert f"from slots av: av ({path}:13), edr: none ({path}:14)" in error.message
    assert f"from slots av: av ({path}:13), edr: av ({path}:14)" in error.message


def test_product_sets_that_differ_only_in_order_are_one_cell(project: Path) -> None:
    body = AXES.replace("[av, edr]]", "[av, edr], [edr, av]]")
    error = matrix_error(project, body)
    assert "listed twice" in error.message and error.line == 12


def test_cell_ids_are_unique_in_every_loaded_matrix(project: Path) -> None:
    body = AXES.replace(
        "products: [[], [av], [av, edr]]", "products: {a: [av, none], b: [edr, none]}"
    )
    ids = [c.id for c in load_matrix(matrix(project, body), catalog_root=project).cells]
    assert len(ids) == len(set(ids)) == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("attempts: 1000000000", "at most 10"),
        ('hosts: [{uri: "qemu:///system\\n--bad"}]', "control character"),
    ],
)
def test_lab_settings_are_checked(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "lab.yaml", text + "\n")
    with pytest.raises(InputError, match=re.escape(message)):
        load_lab_settings(path)


def test_a_full_matrix_too_big_to_expand_is_refused_before_it_is(project: Path) -> None:
    # 2 x 2 x 4^10 = 4 million combinations: seconds and gigabytes before the first check.
    slots = "\n".join(f"    s{i}: [av, edr, dlp, none]" for i in range(10))
    axes = "axes:\n  build: [lin-a, lin-b]\n  hardware: [bios-1cpu, uefi-2cpu]\n"
    body = f"{axes}  products:\n{slots}\n"
    error = matrix_error(project, body)
    assert "4,194,304 combinations, more than 2,000,000" in error.message
    assert error.hint is not None and "pairwise" in error.hint
