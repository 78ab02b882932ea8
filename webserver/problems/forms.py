"""The problem editor: one page of forms that together describe a problem.

`ProblemEditor` bundles the problem form, the app choice, the run config form,
the contract form and its row formsets; it turns their input into the keyword
arguments of `services.problem_create` / `problem_update`, and puts every
`ApplicationError` back on the input at fault. No rule lives here: the
contract is judged by `contracts`, the run config by `runconfig`, the rest by
`services`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from django import forms
from django.forms import formset_factory
from django.utils.safestring import mark_safe

from webserver.errors import ApplicationError
from webserver.problems import contracts, fabs
from webserver.problems.models import JoinPolicy, Problem, ProblemState
from webserver.problems.privacy import KEYS as PRIVACY_KEYS
from webserver.problems.privacy import PrivacyError
from webserver.problems.runconfig import (
    DEFAULTS,
    STRATEGIES,
    RunConfigError,
    format_assignments,
    parse_assignments,
)

MAX_CONTRACT_JSON = 1 << 20


class ProblemForm(forms.Form):
    title = forms.CharField(max_length=200)
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        strip=False,  # Markdown is kept as written: leading spaces are meaningful
        help_text="Markdown; shown on the problem page.",
    )
    join_policy = forms.ChoiceField(choices=JoinPolicy.choices, initial=JoinPolicy.APPROVAL)
    app_source = forms.ChoiceField(
        # A choice label is not a help text: its <code> is written here, a constant marked safe.
        choices=[
            ("template", "A built-in app"),
            ("upload", mark_safe("Upload a FAB (made with <code>flwr build</code>)")),
        ],
        widget=forms.RadioSelect,
        initial="template",
        label="Flower app",
    )
    app_template = forms.ChoiceField(choices=(), required=False, label="Built-in app")
    fab = forms.FileField(required=False, label="FAB file", help_text="The .fab file `flwr build` writes.")

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["app_template"]).choices = [("", "—")] + [
            (app.name, f"{app.name}: {app.description}" if app.description else app.name) for app in fabs.builtin_apps()
        ]
        if editing:
            field = cast(forms.ChoiceField, self.fields["app_source"])
            # Declared above as a list of pairs; Django keeps it a list (only callables become iterators).
            current = cast("list[tuple[str, str]]", field.choices)
            field.choices = [("keep", "Keep the current app"), *current]
            field.initial = "keep"


# The app keys the platform's own settings set: shown once, as the platform setting.
_SET_BY_PLATFORM = {"min-available-nodes": "min_clients", "round-timeout": "round_timeout"}
# App keys with a platform name in the run config document (and a form field of that name).
_NAMED = {"num-server-rounds": "rounds", "strategy": "strategy", "clients-per-round": "clients_per_round"}
APP_FIELD = "app:"
PLATFORM_FIELDS = ("round_timeout", "min_clients", "num_selectors", "reply_policy")


class RunConfigForm(forms.Form):
    """The run config: the platform's settings, then the app's own `[tool.flwr.app.config]`.

    Given the app's declared config (`app_config`: key -> default), the form has one input per
    key, typed as Flower types it (bool, int, float, str) and filled with the app's default or
    the problem's override; without it (a new problem, whose app is not chosen yet) the
    overrides are typed as `key = value` lines and checked against the app on save.
    """

    round_timeout = forms.FloatField(
        initial=DEFAULTS["round_timeout"],
        help_text="Seconds a round waits for replies (the coordinator's limit; also the app's round-timeout "
        "when it declares one).",
    )
    min_clients = forms.IntegerField(
        initial=DEFAULTS["min_clients"],
        help_text="Clients to wait for before the ServerApp starts (also the app's min-available-nodes when it "
        "declares one).",
    )
    num_selectors = forms.IntegerField(initial=DEFAULTS["num_selectors"], help_text="Selectors (1–8).")
    reply_policy = forms.ChoiceField(
        choices=[
            ("", "the app's kind decides: strict for built-in apps, flower for uploaded ones"),
            ("flower", "flower: the ServerApp gets every reply Flower's runtime would deliver"),
            ("strict", "strict: the platform's checks too (the model's arrays, finite values, a weight)"),
        ],
        required=False,
        help_text="Default: strict for the built-in apps, flower for uploaded ones.",
    )

    def __init__(self, *args: Any, app_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declared = dict(app_config) if app_config is not None else None
        self.app_keys: list[str] = []
        given = self.initial.get("app_config")
        overrides = dict(given) if isinstance(given, Mapping) else {}
        if self.declared is None:
            self._add_free_form()
            if isinstance(given, Mapping):
                self.initial["app_config"] = format_assignments(overrides)
            return
        for key, default in self.declared.items():
            if key in _SET_BY_PLATFORM:
                continue
            name = _NAMED.get(key, APP_FIELD + key)
            field = self.fields[name] = _app_field(key, default)
            if name.startswith(APP_FIELD):
                self.app_keys.append(key)
                field.initial = overrides.get(key, default)
            else:
                field.initial = self.initial.get(name, default)

    def _add_free_form(self) -> None:
        self.fields["rounds"] = forms.IntegerField(
            initial=DEFAULTS["rounds"], help_text="Training rounds (the app's num-server-rounds)."
        )
        self.fields["clients_per_round"] = forms.IntegerField(
            initial=DEFAULTS["clients_per_round"],
            min_value=0,
            help_text="Clients sampled each round (the app's clients-per-round); 0 = every connected client.",
        )
        self.fields["strategy"] = forms.ChoiceField(
            choices=[(s, s) for s in STRATEGIES], initial=DEFAULTS["strategy"], help_text="The app's strategy."
        )
        self.fields["app_config"] = forms.CharField(
            widget=forms.Textarea(attrs={"rows": 4}),
            required=False,
            label="Overrides of the app's config",
            help_text="One `key = value` a line, keys of the app's `[tool.flwr.app.config]`. After saving, this "
            "form shows each key of the app with its default. Settings above that the app does not declare "
            "are refused unless left at their defaults.",
        )

    @property
    def platform_fields(self) -> list[Any]:
        return [self[name] for name in PLATFORM_FIELDS]

    @property
    def app_fields(self) -> list[Any]:
        return [self[name] for name in self.fields if name not in PLATFORM_FIELDS]

    def _value(self, name: str) -> Any:
        """The cleaned value, or what the form showed when the input was not posted at all."""
        if self.add_prefix(name) not in self.data and not isinstance(self.fields[name], forms.BooleanField):
            return self.get_initial_for_field(self.fields[name], name)
        value = self.cleaned_data.get(name)
        if value is None or (value == "" and isinstance(self.fields[name], forms.ChoiceField)):
            # An emptied number or choice: what the form showed.
            return self.get_initial_for_field(self.fields[name], name)
        return value

    def document(self) -> dict[str, Any]:
        """The run config document (not yet checked against the app)."""
        data = self.cleaned_data
        timeout = data["round_timeout"]
        doc: dict[str, Any] = {
            "min_clients": data["min_clients"],
            "round_timeout": int(timeout) if timeout is not None and float(timeout).is_integer() else timeout,
            "num_selectors": data["num_selectors"],
        }
        if data.get("reply_policy"):
            doc["reply_policy"] = data["reply_policy"]
        for name in ("rounds", "clients_per_round", "strategy"):
            if name in self.fields:
                doc[name] = self._value(name)
        if self.declared is None:
            doc["app_config"] = parse_assignments(data.get("app_config") or "", field="app_config")
            return doc
        overrides: dict[str, Any] = {}
        for key in self.app_keys:
            name = APP_FIELD + key
            posted_empty = self.add_prefix(name) in self.data and self.cleaned_data.get(name) is None
            value = self.declared[key] if posted_empty else self._value(name)  # emptied: the app's default
            if value != self.declared[key]:
                overrides[key] = value
        doc["app_config"] = overrides
        return doc

    @staticmethod
    def initial_from(config: Mapping[str, Any]) -> dict[str, Any]:
        initial = {k: v for k, v in config.items() if k not in ("strategy_params", "app_config")}
        initial["app_config"] = {**(config.get("strategy_params") or {}), **(config.get("app_config") or {})}
        return initial


def _privacy_field(label: str, help_text: str) -> forms.FloatField:
    # No bounds here: problems.privacy judges the value, in the same words as for the API.
    return forms.FloatField(
        required=False, label=label, help_text=help_text, widget=forms.NumberInput(attrs={"step": "any"})
    )


class PrivacyForm(forms.Form):
    """The privacy requirement: the differential privacy every site must apply; empty boxes are not required.

    Fixed once the problem is published (its join bundles carry it): the boxes are then read-only.
    """

    min_noise_multiplier = _privacy_field(
        "Minimum noise multiplier",
        "Every site clips its update and adds Gaussian noise with at least this multiplier (noise std = multiplier "
        "× 2 × clipping norm), even a site whose data holder set no budget. Empty: no minimum; each site decides.",
    )
    clipping_norm = _privacy_field(
        "Clipping norm", "The L2 norm each site's update is clipped to unless the site sets its own."
    )
    delta = _privacy_field(
        "δ (delta)", "The δ sites report their ε at unless they set their own (the client's default is 1e-5)."
    )

    def __init__(self, *args: Any, frozen: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frozen = frozen
        if frozen:
            for field in self.fields.values():
                field.disabled = True  # Django then keeps the stored value whatever is posted

    def document(self) -> dict[str, Any]:
        """The requirement as given (not yet judged): the filled-in boxes."""
        return {key: self.cleaned_data[key] for key in PRIVACY_KEYS if self.cleaned_data.get(key) is not None}


class MlflowForm(forms.Form):
    """The MLflow tracking server the problem's runs are exported to (docs/mlflow.md).

    The token box is write-only: it is never filled in from the stored token. Left empty it
    keeps the stored token; "remove the token" removes it.
    """

    tracking_url = forms.CharField(
        required=False,
        max_length=500,
        label="MLflow tracking URL",
        help_text="For example https://mlflow.example.org or http://127.0.0.1:5000. Every run is then logged there as "
        "an MLflow run: its settings and app hash, each round's metrics and the final model. Empty: not linked.",
        widget=forms.URLInput(attrs={"placeholder": "https://mlflow.example.org"}),
    )
    token = forms.CharField(
        required=False,
        max_length=4000,
        label="MLflow token",
        strip=True,
        help_text="Sent as `Authorization: Bearer <token>`. Stored sealed; never shown again.",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    remove_token = forms.BooleanField(required=False, label="Remove the stored token")
    experiment = forms.CharField(
        required=False,
        max_length=250,
        label="MLflow experiment",
        help_text="Made if it does not exist. Empty: one named after the problem.",
    )

    def __init__(self, *args: Any, token_set: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token_set = token_set

    def changes(self) -> Any:
        """The settings to store, checked (ApplicationError names the box at fault)."""
        from webserver.problems.mlflow_export import mlflow_settings_check

        data = self.cleaned_data
        token: str | None = data.get("token") or None
        if data.get("remove_token") and not token:
            token = ""
        return mlflow_settings_check(
            tracking_url=data.get("tracking_url") or "", token=token, experiment=data.get("experiment") or ""
        )


def _app_field(key: str, default: Any) -> forms.Field:
    """An input for one key of the app's config, typed like its default (Flower's UserConfig types)."""
    label = key
    shown = "true" if default is True else "false" if default is False else repr(default)
    help_text = f"The app's default: {shown}."
    if key == "num-server-rounds":
        return forms.IntegerField(label=label, required=False, help_text=help_text + " Training rounds.")
    if key == "strategy":
        choices = [(s, s) for s in STRATEGIES]
        return forms.ChoiceField(label=label, required=False, choices=choices, help_text=help_text)
    if key == "clients-per-round":
        return forms.IntegerField(
            label=label,
            required=False,
            min_value=0,
            help_text=help_text + " 0 = every connected client trains each round.",
        )
    if isinstance(default, bool):
        return forms.BooleanField(label=label, required=False, help_text=help_text)
    if isinstance(default, int):
        return forms.IntegerField(label=label, required=False, help_text=help_text)
    if isinstance(default, float):
        return forms.FloatField(label=label, required=False, help_text=help_text)
    return forms.CharField(label=label, required=False, strip=False, empty_value="", help_text=help_text)


class ContractForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[
            ("tabular", "Tabular (CSV files)"),
            ("image-folder", "Image folder"),
            ("numpy", "NumPy arrays (.npz)"),
            ("none", "None: the app loads its own data (nothing is checked)"),
        ],
        widget=forms.RadioSelect,
        initial="tabular",
        label="Kind of data",
    )
    description = forms.CharField(required=False, label="What the data is", max_length=2000)
    # tabular
    # The form metaclass moves declared fields off the class, so `self.files` (the uploads) is untouched;
    # the input must keep the name `files` (it is the contract key), hence the ignore.
    files = forms.CharField(required=False, initial="*.csv", label="CSV files (glob)")  # type: ignore[assignment]
    min_rows = forms.IntegerField(required=False, min_value=0, label="Minimum rows")
    label = forms.CharField(required=False, label="Label column", help_text="Must be one of the fields.")
    extra_columns = forms.ChoiceField(
        choices=[("forbid", "Forbid columns not listed"), ("allow", "Allow other columns")], initial="forbid"
    )
    # image-folder
    classes = forms.CharField(required=False, help_text="Class names separated by commas; one sub-folder each.")
    extensions = forms.CharField(required=False, initial=".png, .jpg, .jpeg", help_text="Separated by commas.")
    image_width = forms.IntegerField(required=False, min_value=1, label="Image width (px)")
    image_height = forms.IntegerField(required=False, min_value=1, label="Image height (px)")
    mode = forms.ChoiceField(
        required=False,
        choices=[("", "any"), ("L", "L (8-bit grey)"), ("RGB", "RGB"), ("RGBA", "RGBA"), ("1", "1 (black and white)")],
    )
    min_images = forms.IntegerField(required=False, min_value=1, label="Minimum images")
    min_images_per_class = forms.IntegerField(required=False, min_value=0, label="Minimum images per class")
    # numpy
    same_length = forms.BooleanField(required=False, help_text="All arrays of a file have the same first dimension.")
    extra_arrays = forms.ChoiceField(
        choices=[("forbid", "Forbid arrays not listed"), ("allow", "Allow other arrays")], initial="forbid"
    )
    # JSON import
    contract_json = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
        required=False,
        label="Contract as JSON",
        help_text="Filled in, this replaces everything above when you save. "
        "“Import into the form” fills the form from it instead.",
    )
    contract_file = forms.FileField(required=False, label="…or a contract .json file")

    SETTINGS = (
        "description",
        "files",
        "min_rows",
        "label",
        "extra_columns",
        "classes",
        "extensions",
        "image_width",
        "image_height",
        "mode",
        "min_images",
        "min_images_per_class",
        "same_length",
        "extra_arrays",
    )

    def json_text(self) -> str:
        """The JSON the user typed or uploaded ("" when none)."""
        upload = self.cleaned_data.get("contract_file")
        if upload is not None:
            if upload.size > MAX_CONTRACT_JSON:
                raise ApplicationError(
                    f"the contract file is {upload.size} bytes; at most {MAX_CONTRACT_JSON} are allowed",
                    field="contract_file",
                )
            try:
                return str(upload.read().decode("utf-8"))
            except UnicodeDecodeError:
                raise ApplicationError("the contract file is not UTF-8 text", field="contract_file") from None
        return str(self.cleaned_data.get("contract_json") or "").strip()


class _RowForm(forms.Form):
    """A table row: its inputs have no <label>, so each gets an aria-label naming column and row."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        row = (self.prefix or "").rsplit("-", 1)[-1]
        for name, field in self.fields.items():
            label = field.label or name.replace("_", " ").capitalize()
            field.widget.attrs.setdefault("aria-label", f"{label}, row {int(row) + 1}" if row.isdigit() else label)


class FieldRowForm(_RowForm):
    name = forms.CharField(required=False, max_length=200)
    type = forms.ChoiceField(choices=[(t, t) for t in contracts.FIELD_TYPES], initial="string")
    required = forms.BooleanField(required=False)
    unique = forms.BooleanField(required=False)
    minimum = forms.CharField(required=False, max_length=64)
    maximum = forms.CharField(required=False, max_length=64)
    enum = forms.CharField(required=False, label="Allowed values", help_text="Separated by commas.")
    pattern = forms.CharField(required=False, label="Pattern (regex)")


class ArrayRowForm(_RowForm):
    file = forms.CharField(required=False, initial="data.npz", max_length=200)
    name = forms.CharField(required=False, max_length=200, label="Array")
    dtype = forms.CharField(required=False, max_length=32, help_text="e.g. float32, int64")
    shape = forms.CharField(required=False, max_length=200, help_text="e.g. -1,30 (-1 = any size)")


FieldRowFormSet = formset_factory(FieldRowForm, extra=3, can_delete=True, max_num=500, absolute_max=1000)
ArrayRowFormSet = formset_factory(ArrayRowForm, extra=2, can_delete=True, max_num=200, absolute_max=400)


def _rows(formset: forms.BaseFormSet) -> list[tuple[int, dict[str, Any]]]:
    """Filled-in rows that are not marked for deletion, with their form index."""
    rows = []
    for index, form in enumerate(formset.forms):
        data = getattr(form, "cleaned_data", None) or {}
        # Initial rows (editing) count even when unchanged; untouched extra rows have no data.
        if not data or data.get("DELETE"):
            continue
        if not any(v for k, v in data.items() if k not in ("DELETE", "type", "file")):
            continue  # an untouched row (only a default type or file name)
        rows.append((index, {k: v for k, v in data.items() if k != "DELETE"}))
    return rows


class ProblemEditor:
    """All the forms of the create/edit page, bound or not."""

    def __init__(
        self,
        data: Any = None,
        files: Any = None,
        *,
        problem: Problem | None = None,
        contract_initial: contracts.ContractFormData | None = None,
        contract_json: str | None = None,
    ) -> None:
        self.problem = problem
        editing = problem is not None
        self.notes: list[str] = []
        problem_initial: dict[str, Any] = {}
        rc_initial: dict[str, Any] = {}
        pv_initial: dict[str, Any] = {}
        ct_initial: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        arrays: list[dict[str, Any]] = []
        if problem is not None and data is None:
            problem_initial = {
                "title": problem.title,
                "description": problem.description,
                "join_policy": problem.join_policy,
            }
            rc_initial = RunConfigForm.initial_from(problem.run_config)
            pv_initial = dict(problem.privacy or {})
            if contract_initial is None and contract_json is None:
                contract_initial = contracts.contract_to_form(problem.contract)
                if contract_initial is None:
                    contract_json = json.dumps(problem.contract, indent=2)
                    self.notes.append(
                        "This contract uses settings the form has no boxes for, so it is edited as JSON below."
                    )
        if contract_initial is not None:
            ct_initial = {"kind": contract_initial.kind, **contract_initial.settings}
            rows, arrays = contract_initial.fields, contract_initial.arrays
        if contract_json is not None:
            ct_initial["contract_json"] = contract_json
        self.problem_form = ProblemForm(data, files, editing=editing, initial=problem_initial, prefix="p")
        app_config: dict[str, Any] | None = None
        if problem is not None:
            try:
                app_config = fabs.app_summary(problem).default_config
            except ApplicationError:
                # A damaged app: the overrides are typed as lines, and saving needs a working app anyway.
                self.notes.append("The problem's app cannot be read, so its settings are shown as text.")
        self.run_config_form = RunConfigForm(data, initial=rc_initial, prefix="rc", app_config=app_config)
        # A published problem's requirement is fixed: the boxes show the stored one, read-only.
        frozen = problem is not None and problem.state != ProblemState.DRAFT
        if frozen and problem is not None:
            pv_initial = dict(problem.privacy or {})
        self.privacy_form = PrivacyForm(data, initial=pv_initial, prefix="pv", frozen=frozen)
        ml_initial: dict[str, Any] = {}
        if problem is not None:
            ml_initial = {"tracking_url": problem.mlflow_tracking_url, "experiment": problem.mlflow_experiment}
        self.mlflow_form = MlflowForm(
            data, initial=ml_initial, prefix="ml", token_set=bool(problem is not None and problem.mlflow_token)
        )
        self.contract_form = ContractForm(data, files, initial=ct_initial, prefix="ct")
        self.field_rows = FieldRowFormSet(data, initial=rows or None, prefix="fields")
        self.array_rows = ArrayRowFormSet(data, initial=arrays or None, prefix="arrays")

    @property
    def forms(self) -> list[Any]:
        return [
            self.problem_form,
            self.run_config_form,
            self.privacy_form,
            self.mlflow_form,
            self.contract_form,
            self.field_rows,
            self.array_rows,
        ]

    def is_valid(self) -> bool:
        return all([f.is_valid() for f in self.forms])  # a list, so every form gets its errors

    # ----------------------------------------------------------- input -> service

    def contract(self) -> dict[str, Any]:
        """The contract document: the JSON if given, else built from the form."""
        text = self.contract_form.json_text()
        if text:
            return contracts.contract_from_json(text)
        settings = {k: self.contract_form.cleaned_data.get(k) for k in ContractForm.SETTINGS}
        return contracts.contract_from_form(
            kind=self.contract_form.cleaned_data["kind"],
            settings=settings,
            fields=[row for _, row in _rows(self.field_rows)],
            arrays=[row for _, row in _rows(self.array_rows)],
        )

    def service_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for problem_create/problem_update; ApplicationError on bad input.

        The contract, the run config form and the app choice are all read before
        anything is raised, so the page shows their problems at once (checking the
        run config against the app's keys is left to the service).
        """
        data = self.problem_form.cleaned_data
        kwargs: dict[str, Any] = {
            "title": data["title"],
            "description": data["description"],
            "join_policy": data["join_policy"],
            "privacy": self.privacy_form.document(),
        }
        failures: list[ApplicationError] = []
        try:
            kwargs["contract"] = self.contract()
        except ApplicationError as exc:
            failures.append(exc)
        try:
            kwargs["run_config"] = self.run_config_form.document()
        except ApplicationError as exc:
            failures.append(exc)
        source = data["app_source"]
        if source == "template":
            if not data.get("app_template"):
                failures.append(ApplicationError("choose one of the built-in apps", field="app_template"))
            kwargs["app_template"] = data.get("app_template")
        elif source == "upload":
            upload = data.get("fab")
            if upload is None:
                failures.append(ApplicationError("choose the .fab file to upload", field="fab"))
            else:
                try:
                    kwargs["fab_bytes"], kwargs["fab_name"] = fabs.read_upload(upload)
                except ApplicationError as exc:
                    failures.append(exc)
        for failure in failures[1:]:
            self.add_error(failure)
        if failures:
            raise failures[0]
        return kwargs

    # ----------------------------------------------------------- errors -> input

    def add_error(self, exc: ApplicationError) -> None:
        """Show `exc` on the input it is about (or at the top of its section)."""
        if isinstance(exc, RunConfigError):
            for key, messages in exc.errors.items():
                target = key if key in self.run_config_form.fields else None
                for message in messages:
                    self.run_config_form.add_error(target, message)
            return
        privacy = exc.errors if isinstance(exc, PrivacyError) else exc.extra.get("privacy")
        if isinstance(privacy, Mapping):
            for key, messages in privacy.items():
                target = key if key in self.privacy_form.fields else None
                for message in messages:
                    self.privacy_form.add_error(target, message)
            return
        if isinstance(exc, contracts.ContractFormError):
            for key, messages in exc.errors.items():
                for message in messages:
                    self._contract_error(key, message)
            return
        field = exc.field
        if field is not None and field.startswith("mlflow_") and field[len("mlflow_") :] in self.mlflow_form.fields:
            self.mlflow_form.add_error(field[len("mlflow_") :], exc.message)
            return
        if field == "contract":
            for message in exc.extra.get("issues") or [exc.message]:
                self.contract_form.add_error(None, message)
        elif field in self.run_config_form.fields:
            self.run_config_form.add_error(field, exc.message)
        elif field in self.contract_form.fields:
            self.contract_form.add_error(field, exc.message)
        elif field in self.problem_form.fields:
            self.problem_form.add_error(field, exc.message)
        else:
            self.problem_form.add_error(None, exc.message)

    def _contract_error(self, key: str, message: str) -> None:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("fields", "arrays"):
            formset = self.field_rows if parts[0] == "fields" else self.array_rows
            indexes = [i for i, _ in _rows(formset)]
            row = int(parts[1])
            if row < len(indexes):
                form = formset.forms[indexes[row]]
                form.add_error(parts[2] if parts[2] in form.fields else None, message)
                return
        target = key if key in self.contract_form.fields else None
        self.contract_form.add_error(target, message)


def _refilled(posted: ProblemEditor, contract_initial: contracts.ContractFormData) -> ProblemEditor:
    """A fresh (unbound, so no errors yet) editor holding what was posted, with `contract_initial`."""
    editor = ProblemEditor(problem=posted.problem, contract_initial=contract_initial, contract_json="")
    pairs: tuple[tuple[forms.Form, forms.Form], ...] = (
        (editor.problem_form, posted.problem_form),
        (editor.run_config_form, posted.run_config_form),
        (editor.privacy_form, posted.privacy_form),
    )
    for fresh, source in pairs:
        source.is_valid()
        fresh.initial.update({k: v for k, v in source.cleaned_data.items() if k != "fab" and v is not None})
    if posted.problem_form.cleaned_data.get("fab") is not None:
        editor.notes.append("Browsers cannot keep a chosen file: choose the FAB file again before saving.")
    return editor


def editor_importing_contract(data: Any, files: Any, *, problem: Problem | None) -> tuple[ProblemEditor, str | None]:
    """A fresh editor with the contract form filled from the posted JSON, or the posted one and the error.

    Everything else the user typed is kept, except a chosen FAB file.
    """
    posted = ProblemEditor(data, files, problem=problem)
    posted.contract_form.is_valid()
    try:
        text = posted.contract_form.json_text()
        if not text:
            raise ApplicationError("paste a contract as JSON or choose a .json file first", field="contract_json")
        doc = contracts.contract_from_json(text)
        form_data = contracts.contract_to_form(doc)
        if form_data is None:
            raise ApplicationError(
                "this contract uses settings the form has no boxes for; it stays as JSON and is used as is when you save",
                field="contract_json",
            )
    except ApplicationError as exc:
        return posted, exc.message
    return _refilled(posted, form_data), None


def editor_with_more_rows(data: Any, files: Any, *, problem: Problem | None) -> ProblemEditor:
    """The posted editor again, unchanged, with empty rows added to the field and array tables."""
    posted = ProblemEditor(data, files, problem=problem)
    posted.contract_form.is_valid()
    posted.field_rows.is_valid()
    posted.array_rows.is_valid()
    settings = {k: posted.contract_form.cleaned_data.get(k) for k in ContractForm.SETTINGS}
    for key in ("files", "extensions", "extra_columns", "extra_arrays"):
        if not settings.get(key):
            settings.pop(key)  # let the form's initial value show
    form_data = contracts.ContractFormData(
        kind=posted.contract_form.cleaned_data.get("kind") or "tabular",
        settings=settings,
        fields=[row for _, row in _rows(posted.field_rows)],
        arrays=[row for _, row in _rows(posted.array_rows)],
    )
    editor = _refilled(posted, form_data)
    editor.contract_form.initial["contract_json"] = posted.contract_form.cleaned_data.get("contract_json", "")
    return editor
