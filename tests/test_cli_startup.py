"""The command line answers at once: building its parser (every command's options, from the registries) and running
a bank command import no torch (importing torch alone takes about 2 s)."""

import subprocess
import sys


def test_the_parser_and_bank_commands_import_no_torch(tmp_path):
    code = ("import sys\nfrom napari_matchseg.cli import build_parser, main\nbuild_parser()\n"
            f"main(['bank', 'create', {str(tmp_path / 'b')!r}])\nmain(['bank', 'list', {str(tmp_path / 'b')!r}])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("[]"), res.stdout
