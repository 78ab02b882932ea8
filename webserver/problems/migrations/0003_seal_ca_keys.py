"""Seal the problems' CA private keys stored in the clear (see webserver/problems/pki.py)."""

from typing import Any

from django.db import migrations


def seal(apps: Any, schema_editor: Any) -> None:
    from webserver.problems.pki import is_sealed, seal_key

    Problem = apps.get_model("problems", "Problem")
    for problem in Problem.objects.exclude(ca_private_key="").only("pk", "ca_private_key"):
        if not is_sealed(problem.ca_private_key):
            problem.ca_private_key = seal_key(problem.ca_private_key)
            problem.save(update_fields=["ca_private_key"])


def unseal(apps: Any, schema_editor: Any) -> None:
    from webserver.problems.pki import open_key

    Problem = apps.get_model("problems", "Problem")
    for problem in Problem.objects.exclude(ca_private_key="").only("pk", "ca_private_key"):
        problem.ca_private_key = open_key(problem.ca_private_key)[0]
        problem.save(update_fields=["ca_private_key"])


class Migration(migrations.Migration):
    dependencies = [
        ("problems", "0002_problem_ca"),
    ]

    operations = [migrations.RunPython(seal, unseal)]
