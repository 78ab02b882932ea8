"""The join request form; the service does the checking, the form only carries input."""

from __future__ import annotations

from django import forms

from webserver.participation.services import MESSAGE_MAX, NOTE_MAX, SITE_NAME_MAX


class JoinRequestForm(forms.Form):
    site_name = forms.CharField(
        label="Site or organisation",
        max_length=SITE_NAME_MAX,
        help_text="How the problem setter and the training logs will name your site.",
    )
    contact_email = forms.EmailField(
        label="Contact e-mail", help_text="Shown only to the problem's setter and the site admins."
    )
    message = forms.CharField(
        label="Message to the problem setter",
        required=False,
        max_length=MESSAGE_MAX,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Optional: who you are, what data you have, how many records.",
    )


class DecisionForm(forms.Form):
    """The optional reason given when rejecting or revoking."""

    reason = forms.CharField(required=False, max_length=NOTE_MAX)


class PartitionForm(forms.Form):
    """A site's new `partition-id` (the service checks the range and swaps with its holder)."""

    partition_id = forms.IntegerField(min_value=0)


class NumPartitionsForm(forms.Form):
    """`num-partitions` for every site; empty: one per approved site."""

    num_partitions = forms.IntegerField(required=False, min_value=1)
