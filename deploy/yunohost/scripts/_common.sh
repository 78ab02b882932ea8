#!/bin/bash
# Shared by the package's scripts. The real work is Fedota's plain Debian installer,
# scripts/install-debian.sh in the source tree that ynh_setup_source unpacks into
# $install_dir/source; YunoHost's helpers do only what is YunoHost's own (nginx,
# systemd units, the admin panel's services, logrotate, backups).

# The three services (systemd units $app-web, $app-worker, $app-beat; conf/<role>.service).
FEDOTA_ROLES=(web worker beat)

# Run install-debian.sh COMMAND with this app's folders, user and port. The package's own
# systemd units run the services (--services none), so the installer only prepares them.
fedota_installer() {
    local command=$1
    shift
    bash "$install_dir/source/scripts/install-debian.sh" "$command" \
        --source "$install_dir/source" \
        --prefix "$install_dir" \
        --data-dir "$data_dir" \
        --log-dir "/var/log/$app" \
        --user "$app" \
        --port "$port" \
        --public-url "https://$domain" \
        --selector-host "$domain" \
        --services none \
        "$@"
}

fedota_add_services() {
    local role
    for role in "${FEDOTA_ROLES[@]}"; do
        ynh_config_add_systemd --service="$app-$role" --template="$role.service"
        yunohost service add "$app-$role" --description="Fedota $role" --log="/var/log/$app/$role.log"
    done
}

fedota_systemctl() {
    local action=$1 role
    if [ "$action" = stop ]; then
        for role in beat worker web; do
            ynh_systemctl --service="$app-$role" --action=stop --log_path="/var/log/$app/$role.log"
        done
        return
    fi
    for role in "${FEDOTA_ROLES[@]}"; do
        if [ "$role" = web ]; then
            # gunicorn says so once it listens.
            ynh_systemctl --service="$app-$role" --action="$action" --log_path="/var/log/$app/$role.log" \
                --wait_until="Listening at"
        else
            ynh_systemctl --service="$app-$role" --action="$action" --log_path="/var/log/$app/$role.log"
        fi
    done
}
