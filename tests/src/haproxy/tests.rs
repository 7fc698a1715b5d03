use super::*;

#[test]
fn parses_show_proc() {
    let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
        11155           master          2 [failed: 1]   0d00h00m03s     2.6.12-1+deb12u4\n\
        # workers\n\
        11171           worker          1               0d00h00m03s     2.6.12-1+deb12u4\n\
        # old workers\n\
        11158           worker          2               0d00h00m09s     2.6.12-1+deb12u4\n\
        # programs\n\n";
    let p = ProcessList::parse(text).unwrap();
    assert_eq!(
        p,
        ProcessList {
            master_pid: 11155,
            reloads: 2,
            failed_reloads: 1,
            workers: vec![11171],
            old_workers: vec![11158],
        }
    );
    assert!(ProcessList::parse("Unknown command.\n").is_err());
}

#[test]
fn parses_servers_state() {
    let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
        3 be 1 s1 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 28081 - 0 0 - - 0\n\
        3 be 2 s2 127.0.0.1 0 5 3 1 0 1 0 0 8 0 0 0 - 28082 - 0 0 - - 0\n\n";
    let s = ServerState::parse_all(text).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (
            s[0].backend.as_str(),
            s[0].name.as_str(),
            s[0].port,
            s[0].op_state
        ),
        ("be", "s1", 28081, OpState::Running)
    );
    assert!(!s[0].admin_state.is_maint());
    assert_eq!((s[1].op_state, s[1].weight), (OpState::Stopped, 3));
    assert!(s[1].admin_state.is_maint());
    assert!(ServerState::parse_all("Can't find backend.\n").is_err());
}

#[test]
fn parses_show_stat() {
    let text = "# pxname,svname,scur,stot,status,type,\n\
        fe,FRONTEND,0,5,OPEN,0,\n\
        be,s1,0,3,UP,2,\n\n";
    let rows = StatRow::parse_all(text).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].proxy.as_str(), rows[1].name.as_str()),
        ("be", "s1")
    );
    assert_eq!(rows[1].number("stot"), Some(3));
    assert_eq!(rows[1].status(), "UP");
    assert!(rows[1].is_server() && !rows[0].is_server());
}

#[test]
fn preamble_declares_an_admin_socket() {
    let text = preamble(Path::new("/tmp/x/haproxy.sock"));
    assert!(text.contains(
        "    stats socket /tmp/x/haproxy.sock mode 600 level admin expose-fd listeners\n"
    ));
    assert!(text.contains("defaults\n    mode http\n"));
}
