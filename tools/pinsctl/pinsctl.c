/* tools/pinsctl/pinsctl.c: pinsctl's main: picks the command. */
#include "pinsctl.h"

int main(int argc, char **argv)
{
    return pinsctl_migrate_main(argc, argv);
}
