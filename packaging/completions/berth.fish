# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_berth_global_optspecs
    string join \n policy= h/help V/version
end

function __fish_berth_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_berth_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_berth_using_subcommand
    set -l cmd (__fish_berth_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c berth -n "__fish_berth_needs_command" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_needs_command" -s V -l version -d 'Print version'
complete -c berth -n "__fish_berth_needs_command" -f -a "run" -d 'Plan and launch a job; exit with the container\'s exit code'
complete -c berth -n "__fish_berth_needs_command" -f -a "explain" -d 'Print the plan for a job without running anything (exit 77 if denied)'
complete -c berth -n "__fish_berth_needs_command" -f -a "policy" -d 'Validate policy files'
complete -c berth -n "__fish_berth_needs_command" -f -a "doctor" -d 'Check this node: docker engine and runc, policy, directories, broker, scheduler glue'
complete -c berth -n "__fish_berth_needs_command" -f -a "lsf" -d 'LSF integration: the esub, and the EXEC_DRIVER controller and monitor'
complete -c berth -n "__fish_berth_needs_command" -f -a "daemon" -d 'Run the broker: a root daemon through which unprivileged job users start containers'
complete -c berth -n "__fish_berth_needs_command" -f -a "slurm" -d 'Slurm OCI runtime entry points (RunTimeRun, RunTimeQuery, RunTimeKill, RunTimeDelete in oci.conf)'
complete -c berth -n "__fish_berth_needs_command" -f -a "bundle" -d 'Manage the shared bundle cache: images kept as tar files on a shared filesystem'
complete -c berth -n "__fish_berth_using_subcommand run" -l scheduler -d 'Where the job\'s request comes from' -r -f -a "lsf\t'LSF job environment: LSFUSER names the job owner when the caller is a trusted relay'
env\t'Plain environment: the caller is always the job owner'"
complete -c berth -n "__fish_berth_using_subcommand run" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand explain" -l scheduler -d 'Where the job\'s request comes from' -r -f -a "lsf\t'LSF job environment: LSFUSER names the job owner when the caller is a trusted relay'
env\t'Plain environment: the caller is always the job owner'"
complete -c berth -n "__fish_berth_using_subcommand explain" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand explain" -l json -d 'Print the plan as JSON'
complete -c berth -n "__fish_berth_using_subcommand explain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand policy; and not __fish_seen_subcommand_from check" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand policy; and not __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand policy; and not __fish_seen_subcommand_from check" -f -a "check" -d 'Check a policy file: syntax, unknown keys, roots, unsafe settings, ownership'
complete -c berth -n "__fish_berth_using_subcommand policy; and __fish_seen_subcommand_from check" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand policy; and __fish_seen_subcommand_from check" -l json -d 'Print findings as JSON'
complete -c berth -n "__fish_berth_using_subcommand policy; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand doctor" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand doctor" -l json -d 'Print the checks as JSON'
complete -c berth -n "__fish_berth_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand lsf; and not __fish_seen_subcommand_from esub control monitor" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand lsf; and not __fish_seen_subcommand_from esub control monitor" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand lsf; and not __fish_seen_subcommand_from esub control monitor" -f -a "esub" -d 'esub for `bsub -a \'docker(IMAGE)\'`: validate the submission against the policy and set LSB_CONTAINER_IMAGE, or reject it'
complete -c berth -n "__fish_berth_using_subcommand lsf; and not __fish_seen_subcommand_from esub control monitor" -f -a "control" -d 'Suspend, resume or terminate the job\'s container (EXEC_DRIVER controller, JOB_CONTROLS)'
complete -c berth -n "__fish_berth_using_subcommand lsf; and not __fish_seen_subcommand_from esub control monitor" -f -a "monitor" -d 'Print the CPU and memory usage of the job\'s container (EXEC_DRIVER monitor)'
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from esub" -l app -d 'Application profile to submit -a docker jobs to (writes LSB_SUB_APP_NAME to LSB_SUB_MODIFY_FILE unless the user chose one with -app)' -r
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from esub" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from esub" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from control" -l job -d 'Job id (default: LSB_JOBID from the environment)' -r
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from control" -l index -d 'Array index (default: LSB_JOBINDEX from the environment, else 0)' -r
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from control" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from control" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from monitor" -l job -d 'Job id (default: LSB_JOBID from the environment)' -r
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from monitor" -l index -d 'Array index (default: LSB_JOBINDEX from the environment, else 0)' -r
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from monitor" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from monitor" -l json -d 'Print the usage as one JSON object'
complete -c berth -n "__fish_berth_using_subcommand lsf; and __fish_seen_subcommand_from monitor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand daemon" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand daemon" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -f -a "run" -d 'RunTimeRun: run the task described by Slurm\'s config.json, through the broker, as the job user'
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -f -a "query" -d 'RunTimeQuery: print the container\'s OCI state as JSON ({} when it is gone)'
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -f -a "kill" -d 'RunTimeKill: signal the container'
complete -c berth -n "__fish_berth_using_subcommand slurm; and not __fish_seen_subcommand_from run query kill delete" -f -a "delete" -d 'RunTimeDelete: remove the container'
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from run" -l env-file -d 'Slurm 23.02+ with IgnoreFileConfigJson=true: the task\'s environment file (%e, CreateEnvFile=null or newline); the command is then ARGS (%@) and SPOOL/config.json is not read' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from run" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from query" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from query" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from kill" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from kill" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from delete" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand slurm; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "create" -d 'Create (or atomically replace) a bundle from an image, a docker save tar or a docker export tar'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "push" -d 'Publish your own bundle from a docker save or export tar, through the broker (users; SPEC §15)'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "list" -d 'List bundles: the site\'s, and (for a user) your own and those shared with you'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "verify" -d 'Re-hash a bundle\'s image.tar and compare with bundle.toml, and each layer with the image config (exit 78 if corrupt)'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "rm" -d 'Remove a bundle from the cache (running jobs are not affected); users remove their own, root anyone\'s'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "gc" -d 'Remove leftovers of interrupted creates, and this node\'s images that berth loaded for bundles no longer in the cache'
complete -c berth -n "__fish_berth_using_subcommand bundle; and not __fish_seen_subcommand_from create push list verify rm gc load" -f -a "load" -d 'Load a bundle\'s image into this node\'s engine now (e.g. from a prolog); nothing is read if it is already there'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -l from-image -d 'Save this image from the node\'s engine (docker save)' -r
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -l from-save -d 'A docker save tar (classic manifest.json or OCI layout) holding one image' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -l from-export -d 'A flat root filesystem tar (docker export, or tar -C rootfs -c .), made into a one-layer image' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -l change -d 'With --from-export: a Dockerfile line applied to the image config, as docker import --change takes (ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL); repeatable' -r
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -l from-save -d 'A docker save tar (classic manifest.json or OCI layout) holding one image' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -l from-export -d 'A flat root filesystem tar (docker export), made into a one-layer image' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -l change -d 'With --from-export: a Dockerfile line applied to the image config (ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL); repeatable' -r
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -l share -d 'Let others run it: group:GROUP (members of one of your groups) or all, as the site\'s bundles.user_share allows' -r
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from push" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from list" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from list" -l json -d 'Print every bundle.toml as JSON'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from verify" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from rm" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from gc" -l min-age -d 'Only remove temporary directories older than this many seconds (a create may still be writing younger ones)' -r
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from gc" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from gc" -l cache-only -d 'Clean the cache only; leave this node\'s engine alone'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from gc" -s h -l help -d 'Print help'
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from load" -l policy -d 'Site policy file (never taken from the environment)' -r -F
complete -c berth -n "__fish_berth_using_subcommand bundle; and __fish_seen_subcommand_from load" -s h -l help -d 'Print help'
