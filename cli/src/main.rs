fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let code = tokengate_cli::cli::main(
        &args,
        &mut std::io::stdin().lock(),
        &mut stdout,
        &mut stderr,
    );
    drop((stdout, stderr));
    std::process::exit(code);
}
